//! `kinfra import`: a `kinfra.toml` from a Procfile, a process-compose.yaml or a compose.yaml
//! (kinfra-import), with a report on stderr of every key that did not map, at its file and
//! line. The result passes `kinfra config check`.

use super::InputError;
use clap::Args;
use kinfra_import::{NoteKind, import_files};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `kinfra import`'s arguments.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Files to import, merged into one config: `Procfile*` (with the `.env` beside it),
    /// `process-compose*.yaml`, `compose*.yaml` or `docker-compose*.yml`. A file named
    /// otherwise is recognised by its content.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Where to write the config. Default: kinfra.toml beside the first FILE.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print the config on stdout and write nothing (the report still goes to stderr).
    #[arg(long)]
    dry_run: bool,
    /// Replace the output file when it exists.
    #[arg(long)]
    force: bool,
}

/// Imports, reports, and writes (or prints) the config. Unreadable or malformed input, and an
/// existing output without `--force`, exit 2.
pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let output = match &args.output {
        Some(path) => path.clone(),
        None => parent_of(&args.files[0]).join("kinfra.toml"),
    };
    if !args.dry_run && !args.force && output.exists() {
        return Err(InputError(format!(
            "{} exists; pass --force to replace it, or -o to write elsewhere",
            output.display()
        ))
        .into());
    }
    let imported = match import_files(&args.files, &parent_of(&output)) {
        Ok(imported) => imported,
        Err(error) if error.is_input_error() => return Err(InputError(error.to_string()).into()),
        Err(error) => return Err(error.into()),
    };
    let not_imported = imported
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::NotImported)
        .count();
    let changed = imported.notes.len() - not_imported;
    {
        let mut err = std::io::stderr().lock();
        for note in &imported.notes {
            writeln!(err, "{note}")?;
        }
    }
    let summary = format!(
        "{} services, {} resources; {not_imported} keys not imported, {changed} changed",
        imported.config.services.len(),
        imported.config.resources.len()
    );
    if args.dry_run {
        print!("{}", imported.toml);
        eprintln!("dry run: {summary}; nothing written");
        return Ok(ExitCode::SUCCESS);
    }
    write(&output, &imported.toml, args.force)?;
    eprintln!(
        "wrote {}: {summary}. Check it with `kinfra config check -c {}`",
        output.display(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes the file; without `force`, never over one that appeared meanwhile.
fn write(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(InputError(format!(
                "{} exists; pass --force to replace it, or -o to write elsewhere",
                path.display()
            ))
            .into());
        }
        Err(e) => {
            return Err(InputError(format!("{}: cannot write: {e}", path.display())).into());
        }
    };
    file.write_all(text.as_bytes())?;
    Ok(())
}
