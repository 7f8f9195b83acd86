//! `kinfra plan`: what `runtime up` would do with each provider resource of the config
//! (`noop`, `create`, `resume`), with the calls it would make, found by reading each
//! resource's status and dry-running its `start` command; nothing that changes state is sent.

use super::{ConfigArg, InputError, load};
use kinfra::providers::sdk::command::validate;
use kinfra::providers::sdk::provider::{InstanceContext, Provider, ResourceDecl};
use kinfra::providers::sdk::result::PlannedRequest;
use kinfra::providers::{build_resource, catalog};
use kinfra_core::config::{Config, ResourceConfig};
use kinfra_core::resource::Observed;
use serde::Serialize;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How long one resource's status read may take before the plan says `unknown`.
const STATUS_LIMIT: Duration = Duration::from_secs(60);

/// The plan: one entry per service and resource of the config.
#[derive(Debug, Serialize)]
struct Plan {
    resources: Vec<Entry>,
}

/// What `runtime up` would do with one service or resource.
#[derive(Debug, Serialize)]
struct Entry {
    name: String,
    /// `process`, `docker`, or the provider resource's kind (`command`, `http-api`, ...).
    kind: String,
    /// `noop | create | resume | unknown` for a provider resource, `local` for the rest.
    action: String,
    /// Why the action is what it is: the observed state, the status error, or
    /// `not planned (local)`.
    reason: String,
    /// The calls `runtime up` would make (masked).
    calls: Vec<Call>,
    /// What `runtime down` would do with it (`keep | pause | delete` for a provider resource,
    /// `stop | remove | remove_volumes` for a container); `null` for a process.
    on_down: Option<kinfra_core::config::OnDown>,
}

/// A call `runtime up` would make: a rendered request, or a description of one that cannot
/// be rendered without sending it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Call {
    /// Rendered by the provider's dry-run.
    Planned(PlannedRequest),
    /// Not rendered.
    Note {
        /// What would be called.
        note: String,
    },
}

impl Call {
    fn text(&self) -> String {
        match self {
            Call::Planned(request) => format!("{} {}", request.method, request.url),
            Call::Note { note } => note.clone(),
        }
    }
}

/// Runs `kinfra plan`.
pub async fn run(arg: &ConfigArg, json: bool) -> anyhow::Result<ExitCode> {
    let (config, _) = load::load(arg)?;
    let plan = plan(&config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![[
        "RESOURCE".to_owned(),
        "KIND".into(),
        "ACTION".into(),
        "CALLS".into(),
        "ON DOWN".into(),
    ]];
    for entry in &plan.resources {
        let action = match entry.action.as_str() {
            "local" | "unknown" => entry.reason.clone(),
            other => other.to_owned(),
        };
        let calls: Vec<String> = entry.calls.iter().map(Call::text).collect();
        table.push([
            entry.name.clone(),
            entry.kind.clone(),
            action,
            if calls.is_empty() {
                "-".into()
            } else {
                calls.join("; ")
            },
            entry
                .on_down
                .and_then(|d| serde_json::to_value(d).ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", super::output::table(&table));
    println!(
        "(read only: statuses were read, nothing was started; ON DOWN is what `runtime down` would do)"
    );
    Ok(ExitCode::SUCCESS)
}

async fn plan(config: &Config) -> anyhow::Result<Plan> {
    let mut resources = Vec::new();
    for name in config.services.keys() {
        resources.push(local(name, "process", None));
    }
    let wanted: Vec<(&String, &ResourceConfig)> = config
        .resources
        .iter()
        .filter(|(_, r)| r.is_provider())
        .collect();
    let catalog = if wanted.is_empty() {
        None
    } else {
        Some(
            catalog(
                &config.state_dir(),
                &config.provider_plugin_dirs(),
                Vec::new(),
            )
            .await,
        )
    };
    let mut problems = Vec::new();
    for (name, resource) in &config.resources {
        let Some(catalog) = catalog.as_ref().filter(|_| resource.is_provider()) else {
            resources.push(local(name, "docker", Some(resource.on_down)));
            continue;
        };
        let (provider, context, decl, built) =
            match build_resource(catalog, config, name, resource).await {
                Ok(b) => (b.provider, b.instance, b.decl, b.resource),
                Err(refused) => {
                    problems.extend(refused);
                    continue;
                }
            };
        let observed = tokio::time::timeout(STATUS_LIMIT, built.status()).await;
        let (action, reason) = match observed {
            Ok(Ok(Observed::Running)) => ("noop", "running".to_owned()),
            Ok(Ok(Observed::Idle)) => ("resume", "idle".to_owned()),
            Ok(Ok(Observed::Exited(exit))) => (
                "resume",
                match exit.code {
                    Some(code) => format!("exited with code {code}"),
                    None => "exited".to_owned(),
                },
            ),
            Ok(Ok(Observed::Absent)) => ("create", "absent".to_owned()),
            Ok(Err(error)) => ("unknown", format!("unknown: {error}")),
            Err(_) => (
                "unknown",
                format!("unknown: status did not answer within {STATUS_LIMIT:?}"),
            ),
        };
        let calls = match action {
            "create" | "resume" => start_calls(&provider, &context, &decl).await,
            _ => Vec::new(),
        };
        resources.push(Entry {
            name: name.clone(),
            kind: built.kind().to_owned(),
            action: action.to_owned(),
            reason,
            calls,
            on_down: Some(resource.on_down),
        });
    }
    if !problems.is_empty() {
        return Err(InputError(problems.join("\n")).into());
    }
    Ok(Plan { resources })
}

fn local(name: &str, kind: &str, on_down: Option<kinfra_core::config::OnDown>) -> Entry {
    Entry {
        name: name.to_owned(),
        kind: kind.to_owned(),
        action: "local".into(),
        reason: "not planned (local)".into(),
        calls: Vec::new(),
        on_down,
    }
}

/// The calls the resource's start would make: what the provider renders for it
/// (`planned_start`), else its `start` command as a dry-run, else a description (never sent).
async fn start_calls(
    provider: &Arc<dyn Provider>,
    context: &InstanceContext,
    decl: &ResourceDecl,
) -> Vec<Call> {
    match provider.planned_start(context, decl).await {
        Ok(Some(requests)) => {
            let secrets = context.secrets();
            return requests
                .iter()
                .map(|r| Call::Planned(r.masked(&secrets)))
                .collect();
        }
        Ok(None) => {}
        Err(error) => {
            return vec![Call::Note {
                note: format!("start (cannot plan: {error})"),
            }];
        }
    }
    let commands = provider.resource_commands(decl);
    let Some(start) = commands.iter().find(|c| c.id == "start" && c.dry_run) else {
        return vec![Call::Note {
            note: "start (no dry-run offered by the provider)".to_owned(),
        }];
    };
    let params = match validate(start, &serde_json::Map::new()) {
        Ok(params) => params,
        Err(error) => {
            return vec![Call::Note {
                note: format!("start (cannot plan: {error})"),
            }];
        }
    };
    match provider.execute(context, decl, start, params, true).await {
        Ok(result) if result.requests.is_empty() => result
            .warnings
            .into_iter()
            .map(|note| Call::Note { note })
            .collect(),
        Ok(result) => result.requests.into_iter().map(Call::Planned).collect(),
        Err(error) => vec![Call::Note {
            note: format!("start (dry-run failed: {error})"),
        }],
    }
}
