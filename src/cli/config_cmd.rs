//! `kinfra config check`: validate a config (its schema and semantics, then each provider
//! resource's keys by its provider) and say what it holds.

use super::ConfigArg;
use super::load::{self, ConfigSource};
use kinfra::config::{Format, key_path, locate_problems};
use kinfra::providers::{catalog, instance_context, resource_decl};
use kinfra::{Config, ConfigError, ConfigErrors};
use std::process::ExitCode;

/// Validates the config; prints a summary (and the config, with `--print`). Problems are
/// `ConfigErrors` (exit 2), each with file, line and key.
pub async fn check(arg: &ConfigArg, print: bool) -> anyhow::Result<ExitCode> {
    let (config, source) = load::load(arg)?;
    let problems = provider_problems(&config).await;
    if !problems.is_empty() {
        return Err(locate(&config, &source, problems).into());
    }
    let name = match &source {
        ConfigSource::File(path) => path.display().to_string(),
        ConfigSource::Embedded => "no kinfra.toml here; the built-in default config".into(),
    };
    println!(
        "ok: {name}: project `{}`, {} services, {} resources, {} providers, {} routes",
        config.project.name,
        config.services.len(),
        config.resources.len(),
        config.providers.instances.len(),
        config.routes.len()
    );
    if print {
        let text = toml::to_string_pretty(&config)?;
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What the providers say about the config, as `(key path, message)`: an instance whose
/// provider is neither built in nor a discovered plugin, a token file that cannot be used,
/// and every problem each provider finds in its resources' keys. Plugin discovery only runs
/// when the config has provider instances or resources.
async fn provider_problems(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if config.providers.instances.is_empty() && !config.resources.values().any(|r| r.is_provider())
    {
        return problems;
    }
    let catalog = catalog(
        &config.state_dir(),
        &config.provider_plugin_dirs(),
        Vec::new(),
    )
    .await;
    for (name, instance) in &config.providers.instances {
        let id = instance.provider_id(name);
        if !catalog.registry.contains(id) {
            let key = if instance.provider.is_some() {
                key_path(&["providers", name, "provider"])
            } else {
                key_path(&["providers", name])
            };
            problems.push((
                key,
                format!(
                    "provider `{id}` is not built in and no plugin kinfra-provider-{id} was \
                     found (see `kinfra providers discover`)"
                ),
            ));
        }
    }
    for (name, resource) in &config.resources {
        // Loading made sure a provider resource names an existing instance.
        let Some(instance_name) = resource.provider.as_deref() else {
            continue;
        };
        let Some(instance) = config.providers.instances.get(instance_name) else {
            continue;
        };
        let Some(provider) = catalog.registry.get(instance.provider_id(instance_name)) else {
            // Reported at the instance above.
            continue;
        };
        let context = match instance_context(config, instance_name, provider.instance_path_keys()) {
            Ok(context) => context,
            Err(problem) => {
                let (key, message) = split_problem(&problem, instance_name);
                if !problems.iter().any(|(k, m)| *k == key && *m == message) {
                    problems.push((key, message));
                }
                continue;
            }
        };
        let decl = match resource_decl(name, resource) {
            Ok(decl) => decl,
            Err(problem) => {
                let (key, message) = split_problem(&problem, instance_name);
                problems.push((key, message));
                continue;
            }
        };
        for problem in provider.validate_resource(&context, &decl).await {
            let key = match &problem.key {
                Some(key) => key_path(&["resources", name, key]),
                None => key_path(&["resources", name]),
            };
            problems.push((key, problem.message));
        }
    }
    problems
}

/// `instance_context`'s and `resource_decl`'s problems read `providers.X.token_file: what` or
/// `resources.X.KEY: what`; split off the key.
fn split_problem(problem: &str, instance: &str) -> (String, String) {
    match problem.split_once(": ") {
        Some((key, message))
            if (key.starts_with("providers.") || key.starts_with("resources."))
                && !key.contains(' ') =>
        {
            (key.to_owned(), message.to_owned())
        }
        _ => (key_path(&["providers", instance]), problem.to_owned()),
    }
}

/// The problems as config errors located in the file (file, line, key), or by key alone for
/// the embedded default config.
fn locate(config: &Config, source: &ConfigSource, problems: Vec<(String, String)>) -> ConfigErrors {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let errors = match source {
        ConfigSource::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => locate_problems(
                &text,
                Format::from_path(path),
                &path.display().to_string(),
                &env,
                problems,
            ),
            Err(_) => unlocated(config, problems),
        },
        ConfigSource::Embedded => unlocated(config, problems),
    };
    ConfigErrors(errors)
}

fn unlocated(config: &Config, problems: Vec<(String, String)>) -> Vec<ConfigError> {
    problems
        .into_iter()
        .map(|(key, message)| ConfigError {
            origin: config.origin.clone(),
            line: None,
            column: None,
            key: Some(key),
            message,
        })
        .collect()
}
