//! Finding and loading the config a command should use.

use super::{ConfigArg, InputError};
use kinfra::Config;
use std::path::{Path, PathBuf};

/// Where the config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file, given with `-c` or found in the working directory.
    File(PathBuf),
    /// The built-in default (no file found).
    Embedded,
}

/// Names looked for in the working directory, in order.
const DEFAULT_NAMES: &[&str] = &["kinfra.toml", "kinfra.yaml", "kinfra.yml", "kinfra.json"];

/// The config file to use: `-c`, else the first default name present, else none.
pub fn find(arg: &ConfigArg) -> Result<Option<PathBuf>, InputError> {
    if let Some(path) = &arg.config {
        if !path.exists() {
            return Err(InputError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        return Ok(Some(path.clone()));
    }
    Ok(DEFAULT_NAMES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file()))
}

/// Loads and validates the config: the file, else the embedded default.
pub fn load(arg: &ConfigArg) -> anyhow::Result<(Config, ConfigSource)> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    match find(arg)? {
        Some(path) => {
            let config = Config::from_file_with_env(&path, &env)?;
            Ok((config, ConfigSource::File(path)))
        }
        None => {
            let config = kinfra::embedded::default_config(Path::new("."), &env)?;
            Ok((config, ConfigSource::Embedded))
        }
    }
}

/// The state dir a client command should talk to. A config that fails validation still
/// names its state dir when it parses that far; otherwise `.kinfra` beside it is assumed.
pub fn state_dir(arg: &ConfigArg) -> anyhow::Result<PathBuf> {
    match load(arg) {
        Ok((config, _)) => Ok(config.state_dir()),
        Err(error) if error.downcast_ref::<InputError>().is_some() => Err(error),
        Err(error) => {
            let base = find(arg)?
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from("."));
            let dir = base.join(".kinfra");
            eprintln!(
                "warning: the config has errors ({}); trying the state dir {}",
                first_line(&error.to_string()),
                dir.display()
            );
            Ok(dir)
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}
