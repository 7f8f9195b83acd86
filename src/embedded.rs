//! Files compiled into the binary from `embedded/`: the default config.

use kinfra_core::config::{Config, ConfigErrors, Format};
use std::path::Path;

/// The default config run by `kinfra runtime up` when there is no `kinfra.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../embedded/default.toml");

/// Name under which the default config appears in messages.
pub const DEFAULT_CONFIG_ORIGIN: &str = "<embedded default config>";

/// Parses the embedded default config, with `base_dir` as the directory its relative paths
/// (the state dir) resolve against, and `KINFRA_*` overrides from `env`.
pub fn default_config(base_dir: &Path, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
    Config::parse(
        DEFAULT_CONFIG,
        Format::Toml,
        DEFAULT_CONFIG_ORIGIN,
        base_dir,
        env,
    )
}
