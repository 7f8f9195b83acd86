//! `kinfra completions SHELL` and `kinfra man`: shell completion scripts and the man page,
//! generated from the clap definitions, so they always match the commands.

use super::Cli;
use anyhow::Context;
use clap::CommandFactory;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Writes `bytes` to stdout; a reader that went away early (`| head`) is not an error.
fn print(bytes: &[u8], what: &str) -> anyhow::Result<()> {
    match std::io::stdout().write_all(bytes) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.with_context(|| format!("cannot write the {what}")),
    }
}

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "kinfra", &mut out);
    print(&out, "completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// Prints kinfra's man page (roff) on stdout, or writes one page per command
/// (`kinfra.1`, `kinfra-runtime.1`, `kinfra-runtime-up.1`, ...) into `dir`.
pub fn man(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let command = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .context("cannot render the man page")?;
            print(&out, "man page")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kinfra config schema`: the JSON Schema (draft 2020-12) of kinfra.toml/.yaml/.json, from
/// the config model's types.
pub fn config_schema() -> anyhow::Result<ExitCode> {
    let schema = kinfra_core::config::schema::config_schema();
    let mut text = serde_json::to_string_pretty(&schema)?;
    text.push('\n');
    print(text.as_bytes(), "schema")?;
    Ok(ExitCode::SUCCESS)
}
