//! A provider resource's typed commands, run for the control socket and the dashboard: the
//! command is found among the resource's, its parameters checked against its spec (every
//! problem at once), a confirmation required where the spec asks for one, and everything
//! returned masked.

use super::core::RuntimeCore;
use super::providers::CommandTarget;
use kinfra_core::Secret;
use kinfra_core::event::EventKind;
use kinfra_core::view::{CommandCall, CommandError};
use kinfra_provider::command::{self, CommandSpec, ParamKind, ValidatedParams};
use kinfra_provider::result::mask_text;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

impl RuntimeCore {
    /// Adds (or replaces) the command targets of freshly built provider resources.
    pub(super) fn set_command_targets(&self, targets: BTreeMap<String, CommandTarget>) {
        let mut held = match self.command_targets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        held.extend(targets);
    }

    /// Forgets the command targets of resources that left the supervisor.
    pub(super) fn forget_command_targets<'a>(&self, names: impl Iterator<Item = &'a String>) {
        let mut held = match self.command_targets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for name in names {
            held.remove(name);
        }
    }

    fn command_target(&self, resource: &str) -> Option<CommandTarget> {
        let held = match self.command_targets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        held.get(resource).cloned()
    }

    /// Runs `call` (see [`kinfra_core::view::RuntimeControl::command`]).
    pub(super) async fn run_command(&self, call: CommandCall) -> Result<Value, CommandError> {
        let input = |problem: String| CommandError::Input(vec![problem]);
        let Some(target) = self.command_target(&call.resource) else {
            let known = self.supervisor.status().contains_key(&call.resource)
                || self.current_config().services.contains_key(&call.resource);
            return Err(input(if known {
                format!(
                    "`{}` is not a provider resource: it has no commands",
                    call.resource
                )
            } else {
                format!("unknown resource `{}`", call.resource)
            }));
        };
        let commands = target.provider.resource_commands(&target.decl);
        let Some(spec) = commands.iter().find(|c| c.id == call.command) else {
            let ids: Vec<&str> = commands.iter().map(|c| c.id.as_str()).collect();
            return Err(input(format!(
                "resource `{}` has no command `{}` (its commands: {})",
                call.resource,
                call.command,
                if ids.is_empty() {
                    "none".to_owned()
                } else {
                    ids.join(", ")
                }
            )));
        };
        let mut param_names: Vec<String> = call.params.keys().cloned().collect();
        param_names.sort();
        let validated =
            checked(spec, call.params, call.dry_run, call.yes).map_err(CommandError::Input)?;
        let mut secrets: Vec<Secret> = target.instance.secrets().into_iter().cloned().collect();
        secrets.extend(validated.secrets().into_iter().cloned());
        let secret_refs: Vec<&Secret> = secrets.iter().collect();
        let values: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
        let result = target
            .provider
            .execute(
                &target.instance,
                &target.decl,
                spec,
                validated,
                call.dry_run,
            )
            .await
            .map(|result| result.mask(&secret_refs))
            .map_err(|error| mask_text(&error.to_string(), &values));
        // Every execution is kept in the store's history (`kinfra runtime history NAME`).
        let (success, operation, error) = match &result {
            Ok(result) => (result.success, result.operation.clone(), None),
            Err(error) => (false, None, Some(error.clone())),
        };
        self.events.emit(EventKind::CommandExecuted {
            resource: call.resource,
            command: call.command,
            params: param_names,
            dry_run: call.dry_run,
            success,
            operation,
            error,
        });
        let result = result.map_err(CommandError::Failed)?;
        serde_json::to_value(&result).map_err(|e| CommandError::Failed(e.to_string()))
    }
}

/// `params` checked against `spec`, typed, with every problem at once: the parameters', a
/// dry-run the command does not support, a missing confirmation (a dry-run needs none: it
/// sends nothing).
fn checked(
    spec: &CommandSpec,
    params: Map<String, Value>,
    dry_run: bool,
    yes: bool,
) -> Result<ValidatedParams, Vec<String>> {
    let (params, failed) = typed_params(spec, params);
    let mut problems: Vec<String> = failed.iter().map(|(_, p)| p.clone()).collect();
    // The rest is checked too; a parameter whose text did not parse is not also "missing".
    let validated = match command::validate(spec, &params) {
        Ok(validated) => Some(validated),
        Err(errors) => {
            problems.extend(errors.problems.iter().map(ToString::to_string).filter(|p| {
                !failed
                    .iter()
                    .any(|(key, _)| p.starts_with(&format!("parameter `{key}`")))
            }));
            None
        }
    };
    if dry_run && !spec.dry_run {
        problems.push(format!("command `{}` does not support a dry-run", spec.id));
    }
    if spec.confirm && !yes && !dry_run {
        problems.push(format!(
            "command `{}` needs confirmation: pass --yes (`\"yes\": true`)",
            spec.id
        ));
    }
    match validated.filter(|_| problems.is_empty()) {
        Some(validated) => Ok(validated.with_confirmation(yes)),
        None => Err(problems),
    }
}

/// `params` with the string values of integer, number and boolean parameters parsed by the
/// spec (the CLI sends text), everything else as given; and the keys whose text did not
/// parse, each with its problem.
fn typed_params(
    spec: &CommandSpec,
    params: Map<String, Value>,
) -> (Map<String, Value>, Vec<(String, String)>) {
    let mut out = Map::new();
    let mut failed = Vec::new();
    for (key, value) in params {
        let parsed_kind = spec.params.iter().find(|p| p.name == key).is_some_and(|p| {
            matches!(
                p.kind,
                ParamKind::Integer { .. } | ParamKind::Number { .. } | ParamKind::Boolean
            )
        });
        match value {
            Value::String(text) if parsed_kind => {
                match command::parse_cli_params(spec, &[(key.as_str(), text.as_str())]) {
                    Ok(typed) => out.extend(typed),
                    Err(errors) => {
                        failed.extend(errors.problems.iter().map(|p| (key.clone(), p.to_string())))
                    }
                }
            }
            other => {
                out.insert(key, other);
            }
        }
    }
    (out, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfra_provider::command::ParamSpec;
    use serde_json::json;

    fn spec(confirm: bool, dry_run: bool) -> CommandSpec {
        CommandSpec {
            id: "delete".into(),
            name: "Delete".into(),
            description: String::new(),
            category: String::new(),
            resource_type: None,
            params: vec![
                ParamSpec {
                    name: "replicas".into(),
                    kind: ParamKind::Integer {
                        min: Some(0),
                        max: None,
                    },
                    required: true,
                    default: None,
                    description: String::new(),
                },
                ParamSpec {
                    name: "force".into(),
                    kind: ParamKind::Boolean,
                    required: false,
                    default: None,
                    description: String::new(),
                },
            ],
            dry_run,
            confirm,
        }
    }

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn text_params_are_typed_and_every_problem_is_named() {
        let ok = checked(
            &spec(false, true),
            params(json!({"replicas": "2", "force": "yes"})),
            false,
            false,
        );
        let ok = ok.unwrap_or_default();
        assert_eq!(ok.integer("replicas"), Some(2));
        let err = checked(
            &spec(false, false),
            params(json!({"replicas": "two", "force": "maybe"})),
            true,
            false,
        )
        .err()
        .unwrap_or_default();
        assert_eq!(err.len(), 3, "{err:?}");
        assert!(
            err[0].contains("`force`") && err[1].contains("`replicas`"),
            "{err:?}"
        );
        assert!(err[2].contains("does not support a dry-run"), "{err:?}");
        // A bad text, an unknown parameter and a missing one: all named, none twice.
        let err = checked(
            &spec(false, true),
            params(json!({"force": "maybe", "colour": "red"})),
            false,
            false,
        )
        .err()
        .unwrap_or_default();
        assert_eq!(err.len(), 3, "{err:?}");
        for key in ["`force`", "`colour`", "`replicas`: missing"] {
            assert!(err.iter().any(|p| p.contains(key)), "{key}: {err:?}");
        }
    }

    #[test]
    fn a_confirm_command_needs_yes_unless_it_is_a_dry_run() {
        let s = spec(true, true);
        let p = || params(json!({"replicas": 1}));
        let err = checked(&s, p(), false, false).err().unwrap_or_default();
        assert!(
            err.len() == 1 && err[0].contains("needs confirmation"),
            "{err:?}"
        );
        assert!(checked(&s, p(), false, true).is_ok());
        assert!(checked(&s, p(), true, false).is_ok());
    }
}
