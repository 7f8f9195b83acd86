//! A provider resource's typed commands, run for the control socket and the dashboard: the
//! command is found among the resource's, its parameters checked against its spec (every
//! problem at once), a confirmation required where the spec asks for one, and everything
//! returned masked.

use super::core::RuntimeCore;
use super::providers::CommandTarget;
use kinfra_core::Secret;
use kinfra_core::view::{CommandCall, CommandError};
use kinfra_provider::command::{self, CommandSpec, ParamKind};
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
        let mut problems = Vec::new();
        let params = match typed_params(spec, call.params) {
            Ok(params) => params,
            Err(errors) => {
                problems.extend(errors.problems.iter().map(ToString::to_string));
                Map::new()
            }
        };
        let validated = if problems.is_empty() {
            match command::validate(spec, &params) {
                Ok(validated) => Some(validated),
                Err(errors) => {
                    problems.extend(errors.problems.iter().map(ToString::to_string));
                    None
                }
            }
        } else {
            None
        };
        if call.dry_run && !spec.dry_run {
            problems.push(format!("command `{}` does not support a dry-run", spec.id));
        }
        if spec.confirm && !call.yes && !call.dry_run {
            problems.push(format!(
                "command `{}` needs confirmation: pass --yes (`\"yes\": true`)",
                spec.id
            ));
        }
        let Some(validated) = validated.filter(|_| problems.is_empty()) else {
            return Err(CommandError::Input(problems));
        };
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
            .map_err(|error| CommandError::Failed(mask_text(&error.to_string(), &values)))?;
        let result = result.mask(&secret_refs);
        serde_json::to_value(&result).map_err(|e| CommandError::Failed(e.to_string()))
    }
}

/// `params` with the string values of integer, number and boolean parameters parsed by the
/// spec (the CLI sends text); everything else as given.
fn typed_params(
    spec: &CommandSpec,
    params: Map<String, Value>,
) -> Result<Map<String, Value>, command::ParamErrors> {
    let mut texts = Vec::new();
    let mut out = Map::new();
    for (key, value) in params {
        let parsed_kind = spec.params.iter().find(|p| p.name == key).is_some_and(|p| {
            matches!(
                p.kind,
                ParamKind::Integer { .. } | ParamKind::Number { .. } | ParamKind::Boolean
            )
        });
        match value {
            Value::String(text) if parsed_kind => texts.push((key, text)),
            other => {
                out.insert(key, other);
            }
        }
    }
    let pairs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    out.extend(command::parse_cli_params(spec, &pairs)?);
    Ok(out)
}
