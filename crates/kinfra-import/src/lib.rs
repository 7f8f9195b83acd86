//! `kinfra import`: a `kinfra.toml` from the files a project already has — a Procfile
//! (foreman, overmind, Heroku) with its `.env`, a `process-compose.yaml`, a `compose.yaml` —
//! and a report naming, at its file and line, every key that did not map or mapped only
//! approximately. The result is checked with the same parser `kinfra config check` uses.

mod compose;
mod emit;
mod envfile;
mod process_compose;
mod procfile;
mod text;
mod yaml;

pub use emit::{Dependency, Document};

use kinfra_core::config::{Config, ConfigErrors};
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The source formats an import reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// `name: command` lines (foreman, overmind, Heroku), with `.env` beside.
    Procfile,
    /// process-compose's `process-compose.yaml`.
    ProcessCompose,
    /// The Compose specification's `compose.yaml` / `docker-compose.yml`.
    Compose,
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Procfile => "Procfile",
            Self::ProcessCompose => "process-compose",
            Self::Compose => "compose",
        })
    }
}

impl SourceFormat {
    /// The format a file name says: `Procfile*`, `process-compose*.y(a)ml`,
    /// `compose*.y(a)ml` / `docker-compose*.y(a)ml`.
    pub fn from_name(path: &Path) -> Option<SourceFormat> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if name.starts_with("procfile") {
            Some(Self::Procfile)
        } else if yaml && name.starts_with("process-compose") {
            Some(Self::ProcessCompose)
        } else if yaml && (name.starts_with("compose") || name.starts_with("docker-compose")) {
            Some(Self::Compose)
        } else {
            None
        }
    }

    /// The format the content says: YAML with `processes` is process-compose, with
    /// `services` compose; `name: command` lines only are a Procfile.
    pub fn from_content(text: &str) -> Option<SourceFormat> {
        if let Ok(root) = yaml::parse(text) {
            if root.get("processes").is_some() {
                return Some(Self::ProcessCompose);
            }
            if root.get("services").is_some() {
                return Some(Self::Compose);
            }
        }
        procfile::looks_like(text).then_some(Self::Procfile)
    }
}

/// Whether a report line is about something left out or something changed on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// The key has no kinfra equivalent: it is not in the result.
    NotImported,
    /// The key was imported, with a difference worth knowing.
    Changed,
}

/// One line of the import's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Left out, or changed.
    pub kind: NoteKind,
    /// The source file, as given.
    pub file: String,
    /// 1-based line in it.
    pub line: usize,
    /// The key (`services.app.build`, `processes.api.shutdown.command`).
    pub key: String,
    /// Why, and what kinfra does instead.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            NoteKind::NotImported => "not imported",
            NoteKind::Changed => "changed",
        };
        write!(
            f,
            "{}:{}: {what}: `{}`: {}",
            self.file, self.line, self.key, self.message
        )
    }
}

/// Why an import failed.
#[derive(Debug, Error)]
pub enum ImportError {
    /// A source file (or an env file it names) cannot be read.
    #[error("{file}: cannot read the file: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A source file that does not parse, or holds something of the wrong shape.
    #[error("{file}:{line}: {message}")]
    Malformed {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// What was found and what was expected.
        message: String,
    },
    /// Neither the name nor the content says which format a file is.
    #[error(
        "{file}: cannot tell the format: expected a Procfile (`name: command` lines), a \
         process-compose.yaml (with `processes:`) or a compose.yaml (with `services:`)"
    )]
    UnknownFormat {
        /// The file.
        file: String,
    },
    /// No file was given.
    #[error("no file to import")]
    NoFiles,
    /// The result does not pass kinfra's config check: a bug of the import.
    #[error("the imported config does not pass `kinfra config check` (please report it):\n{0}")]
    Output(ConfigErrors),
}

impl ImportError {
    /// Whether the input is at fault (exit 2), rather than the import itself.
    pub fn is_input_error(&self) -> bool {
        !matches!(self, ImportError::Output(_))
    }
}

/// A finished import: the TOML text, the checked config, and the report.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The `kinfra.toml` text.
    pub toml: String,
    /// The config it parses to (with the same parser as `kinfra config check`).
    pub config: Config,
    /// Every key left out or changed, in file order.
    pub notes: Vec<Note>,
}

/// One source file being converted: its name for messages, its directory, and the report.
pub(crate) struct Source<'a> {
    pub file: String,
    pub dir: PathBuf,
    pub notes: &'a mut Vec<Note>,
}

impl Source<'_> {
    /// Reports a key with no kinfra equivalent.
    pub fn not_imported(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.note(NoteKind::NotImported, line, key, message);
    }

    /// Reports a key imported with a difference.
    pub fn changed(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.note(NoteKind::Changed, line, key, message);
    }

    fn note(&mut self, kind: NoteKind, line: usize, key: &str, message: impl Into<String>) {
        self.notes.push(Note {
            kind,
            file: self.file.clone(),
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// A malformed-input error at `line`.
    pub fn malformed(&self, line: usize, message: impl Into<String>) -> ImportError {
        ImportError::Malformed {
            file: self.file.clone(),
            line,
            message: message.into(),
        }
    }

    /// Reads a file named by the source (an env file), relative to its directory.
    pub fn read_beside(&self, name: &str) -> Result<(PathBuf, String), ImportError> {
        let path = self.dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|source| ImportError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Ok((path, text))
    }
}

/// A kinfra name from a source's name: letters, digits, `_` and `-`, at most 63 characters.
pub(crate) fn kinfra_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if cleaned.is_empty() {
        "service".into()
    } else {
        cleaned
    }
}

/// The project name a directory gives (compose's default project name is its directory's).
fn project_name(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let name = dir.file_name()?.to_str()?;
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_owned();
    (!name.is_empty()).then_some(name)
}

/// Imports `files` into one config. `base_dir` is where the result will live (relative paths
/// of the result resolve against it when it is checked). Each file's format comes from its
/// name, else from its content.
pub fn import_files(files: &[PathBuf], base_dir: &Path) -> Result<Imported, ImportError> {
    let first = files.first().ok_or(ImportError::NoFiles)?;
    let mut doc = Document::default();
    let mut notes = Vec::new();
    let first_dir = dir_of(first);
    doc.project = project_name(&first_dir);
    for path in files {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
            file: file.clone(),
            source,
        })?;
        let format = SourceFormat::from_name(path)
            .or_else(|| SourceFormat::from_content(&text))
            .ok_or_else(|| ImportError::UnknownFormat { file: file.clone() })?;
        let mut source = Source {
            file: file.clone(),
            dir: dir_of(path),
            notes: &mut notes,
        };
        let first_table = doc.tables.len();
        match format {
            SourceFormat::Procfile => procfile::import(&text, &mut source, &mut doc)?,
            SourceFormat::ProcessCompose => process_compose::import(&text, &mut source, &mut doc)?,
            SourceFormat::Compose => compose::import(&text, &mut source, &mut doc)?,
        }
        if let Some(rebase) = relative_dir(base_dir, &dir_of(path)) {
            rebase_working_dirs(&mut doc.tables[first_table..], &rebase);
        }
        if format != SourceFormat::Procfile && dir_of(path).join(".env").is_file() {
            let dotenv = dir_of(path).join(".env").display().to_string();
            notes.push(Note {
                kind: NoteKind::NotImported,
                file: dotenv.clone(),
                line: 1,
                key: ".env".into(),
                message: format!(
                    "{format} reads it to fill in `${{...}}` in {file}; kinfra fills them in from \
                     its own environment when a service starts: export these variables, or add \
                     them to [env]"
                ),
            });
        }
        doc.sources.push(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(file),
        );
    }
    settle_dependencies(&mut doc, &mut notes);
    let toml = doc.render();
    let config = check(&toml, base_dir)?;
    Ok(Imported {
        toml,
        config,
        notes,
    })
}

/// Drops the dependencies kinfra would refuse, each reported where it was written: on a name
/// no imported file defines, or waiting for a successful exit of something that restarts
/// always (it never completes).
fn settle_dependencies(doc: &mut Document, notes: &mut Vec<Note>) {
    let restart_of = |doc: &Document, name: &str| {
        doc.tables.iter().find(|t| t.name == name).map(|t| {
            t.get("restart")
                .and_then(|v| v.as_str())
                .unwrap_or("on-failure")
                .to_owned()
        })
    };
    for dep in std::mem::take(&mut doc.dependencies) {
        let condition = doc
            .tables
            .iter()
            .find(|t| t.name == dep.from)
            .and_then(|t| t.get("depends_on"))
            .and_then(|d| d.get(&dep.target))
            .and_then(|c| c.as_str())
            .map(str::to_owned);
        let Some(condition) = condition else { continue };
        let problem = match restart_of(&*doc, &dep.target).as_deref() {
            None => Some(format!(
                "`{}` is not in the imported files; kinfra refuses a dependency on a name it \
                 does not know",
                dep.target
            )),
            Some(policy @ ("always" | "unless-stopped"))
                if condition == "completed_successfully" =>
            {
                Some(format!(
                    "`{}` restarts {policy} and so never completes; the dependency is dropped",
                    dep.target
                ))
            }
            _ => None,
        };
        let Some(message) = problem else { continue };
        notes.push(Note {
            kind: NoteKind::NotImported,
            file: dep.file.clone(),
            line: dep.line,
            key: dep.key.clone(),
            message,
        });
        if let Some(t) = doc.tables.iter_mut().find(|t| t.name == dep.from) {
            let empty = match t.entries.iter_mut().find(|(k, _)| k == "depends_on") {
                Some((_, toml::Value::Table(deps))) => {
                    deps.remove(&dep.target);
                    deps.is_empty()
                }
                _ => false,
            };
            if empty {
                t.entries.retain(|(k, _)| k != "depends_on");
            }
        }
    }
}

/// The path from `base` to `dir` (`sub`, `../app`), when they differ.
fn relative_dir(base: &Path, dir: &Path) -> Option<PathBuf> {
    let base = std::fs::canonicalize(base).ok()?;
    let dir = std::fs::canonicalize(dir).ok()?;
    if base == dir {
        return None;
    }
    let common = base
        .components()
        .zip(dir.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in base.components().skip(common) {
        out.push("..");
    }
    for c in dir.components().skip(common) {
        out.push(c);
    }
    Some(out)
}

/// Services run in their source file's directory (foreman runs a Procfile's commands there;
/// process-compose's relative `working_dir` starts there): when the config is written
/// elsewhere, their working dirs say so.
fn rebase_working_dirs(tables: &mut [emit::Table], rebase: &Path) {
    for t in tables.iter_mut().filter(|t| t.section == "services") {
        let dir = match t.get("working_dir").and_then(|v| v.as_str()) {
            Some(w) if Path::new(w).is_absolute() => continue,
            Some(w) => rebase.join(w),
            None => rebase.to_path_buf(),
        };
        let value = toml::Value::String(dir.display().to_string());
        match t.entries.iter().position(|(k, _)| k == "working_dir") {
            Some(i) => t.entries[i].1 = value,
            None => {
                let at = t
                    .entries
                    .iter()
                    .position(|(k, _)| k == "command")
                    .map_or(0, |i| i + 1);
                t.entries.insert(at, ("working_dir".into(), value));
            }
        }
    }
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Parses the result as `kinfra config check` does (without `KINFRA_*` overrides).
fn check(toml: &str, base_dir: &Path) -> Result<Config, ImportError> {
    Config::parse(
        toml,
        kinfra_core::config::Format::Toml,
        "<imported kinfra.toml>",
        base_dir,
        &[],
    )
    .map_err(ImportError::Output)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_names() {
        let f = |n: &str| SourceFormat::from_name(Path::new(n));
        assert_eq!(f("Procfile"), Some(SourceFormat::Procfile));
        assert_eq!(f("dir/Procfile.dev"), Some(SourceFormat::Procfile));
        assert_eq!(
            f("process-compose.yaml"),
            Some(SourceFormat::ProcessCompose)
        );
        assert_eq!(
            f("process-compose.override.yml"),
            Some(SourceFormat::ProcessCompose)
        );
        assert_eq!(f("compose.yaml"), Some(SourceFormat::Compose));
        assert_eq!(f("docker-compose.dev.yml"), Some(SourceFormat::Compose));
        assert_eq!(f("kinfra.toml"), None);
    }

    #[test]
    fn formats_from_content() {
        let f = SourceFormat::from_content;
        assert_eq!(
            f("processes:\n  a:\n    command: x\n"),
            Some(SourceFormat::ProcessCompose)
        );
        assert_eq!(
            f("services:\n  db:\n    image: postgres\n"),
            Some(SourceFormat::Compose)
        );
        assert_eq!(
            f("# hi\nweb: bundle exec puma\n"),
            Some(SourceFormat::Procfile)
        );
        assert_eq!(f("[project]\nname = 1\n"), None);
    }

    #[test]
    fn names_are_made_valid() {
        assert_eq!(kinfra_name("Server_1A"), "Server_1A");
        assert_eq!(kinfra_name("api.v2"), "api-v2");
    }

    #[test]
    fn several_files_make_one_checked_config() {
        let dir = tempfile::tempdir().unwrap();
        let procfile = dir.path().join("Procfile");
        std::fs::write(&procfile, "web: python3 -m http.server $PORT\n").unwrap();
        let compose = dir.path().join("compose.yaml");
        std::fs::write(
            &compose,
            "services:\n  cache:\n    image: redis:7\n    ports: [\"6379:6379\"]\n",
        )
        .unwrap();
        let out = import_files(&[procfile, compose], dir.path()).unwrap();
        assert!(out.config.services.contains_key("web"));
        assert!(out.config.resources.contains_key("cache"));
        assert!(
            out.toml.contains("from Procfile, compose.yaml"),
            "{}",
            out.toml
        );
    }

    #[test]
    fn a_config_written_elsewhere_runs_services_in_their_source_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        let procfile = dir.path().join("app/Procfile");
        std::fs::write(&procfile, "web: ./server $PORT\n").unwrap();
        let pc = dir.path().join("app/process-compose.yaml");
        std::fs::write(
            &pc,
            "processes:\n  job:\n    command: x\n    working_dir: jobs\n",
        )
        .unwrap();
        let out = import_files(&[procfile.clone(), pc], dir.path()).unwrap();
        let wd = |n: &str| out.config.services[n].working_dir.clone();
        assert_eq!(wd("web"), Some(PathBuf::from("app")));
        assert_eq!(wd("job"), Some(PathBuf::from("app/jobs")));
        let out = import_files(&[procfile], &dir.path().join("app")).unwrap();
        assert_eq!(out.config.services["web"].working_dir, None);
    }

    #[test]
    fn unknown_format_and_missing_file_are_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("notes.txt");
        std::fs::write(&odd, "just some words\n").unwrap();
        let e = import_files(&[odd], dir.path()).unwrap_err();
        assert!(matches!(e, ImportError::UnknownFormat { .. }), "{e}");
        assert!(e.is_input_error());
        let e = import_files(&[dir.path().join("nope")], dir.path()).unwrap_err();
        assert!(matches!(e, ImportError::Read { .. }), "{e}");
    }
}
