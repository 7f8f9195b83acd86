//! `kinfra config check`: validate a config and say what it holds.

use super::ConfigArg;
use super::load::{self, ConfigSource};
use std::process::ExitCode;

/// Validates the config; prints a summary (and the config, with `--print`).
pub fn check(arg: &ConfigArg, print: bool) -> anyhow::Result<ExitCode> {
    let (config, source) = load::load(arg)?;
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
