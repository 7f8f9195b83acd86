//! Discovery of external providers: executables named `kinfra-provider-<id>` in a list of
//! directories ([`search_dirs`]: `[providers] plugin_dirs`, then `<state_dir>/providers/`,
//! then `PATH`). Each one is asked `describe`; the [`DiscoveryReport`] says what was found
//! and why anything else was not used. When two directories hold the same id, the first
//! directory wins.

use crate::plugin::{Description, PluginError, PluginOptions, describe};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What every plugin executable's name starts with.
pub const PREFIX: &str = "kinfra-provider-";

/// A plugin that can be used.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredPlugin {
    /// Its id (the executable's name without [`PREFIX`]).
    pub id: String,
    /// The executable.
    pub path: PathBuf,
    /// What `describe` said.
    pub description: Description,
}

/// Why a candidate was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Not a regular file (a directory, a dangling link).
    NotAFile,
    /// No execute permission.
    NotExecutable,
    /// `describe` failed, timed out, or answered with the wrong shape.
    DescribeFailed(PluginError),
    /// `describe` gave another id than the name.
    IdMismatch {
        /// The id `describe` gave.
        described: String,
    },
    /// The same id was found earlier.
    Duplicate {
        /// The one that is used.
        first: PathBuf,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAFile => f.write_str("not a regular file"),
            Self::NotExecutable => f.write_str("not executable"),
            Self::DescribeFailed(e) => write!(f, "describe failed: {e}"),
            Self::IdMismatch { described } => {
                write!(f, "describes itself as `{described}`, not as its name says")
            }
            Self::Duplicate { first } => write!(f, "duplicate id; {} is used", first.display()),
        }
    }
}

/// A candidate that was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedPlugin {
    /// The id from its name.
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: SkipReason,
}

/// What a discovery found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiscoveryReport {
    /// Usable plugins, in discovery order.
    pub found: Vec<DiscoveredPlugin>,
    /// Candidates not used, and why.
    pub skipped: Vec<SkippedPlugin>,
    /// Directories that exist but could not be read, with the error.
    pub unreadable_dirs: Vec<(PathBuf, String)>,
}

/// The directories searched, in order: `plugin_dirs`, `<state_dir>/providers`, then every
/// entry of `PATH`.
pub fn search_dirs(state_dir: &Path, plugin_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = plugin_dirs.to_vec();
    dirs.push(state_dir.join("providers"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs
}

/// Scans `dirs` for `kinfra-provider-<id>` executables and describes each (bounded by
/// `options.timeout`). Missing directories are skipped silently (`PATH` often names some);
/// a directory listed twice is scanned once.
pub async fn discover(dirs: &[PathBuf], options: PluginOptions) -> DiscoveryReport {
    let mut report = DiscoveryReport::default();
    let mut seen_dirs = HashSet::new();
    let mut first: HashMap<String, PathBuf> = HashMap::new();
    for dir in dirs {
        let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        if !seen_dirs.insert(key) {
            continue;
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                report.unreadable_dirs.push((dir.clone(), e.to_string()));
                continue;
            }
        };
        let mut candidates: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let id = name.strip_prefix(PREFIX)?;
                (!id.is_empty()).then(|| (id.to_owned(), entry.path()))
            })
            .collect();
        candidates.sort();
        for (id, path) in candidates {
            let skip = |reason| SkippedPlugin {
                id: id.clone(),
                path: path.clone(),
                reason,
            };
            if let Some(used) = first.get(&id) {
                report.skipped.push(skip(SkipReason::Duplicate {
                    first: used.clone(),
                }));
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) if !m.is_file() => {
                    report.skipped.push(skip(SkipReason::NotAFile));
                    continue;
                }
                Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                    report.skipped.push(skip(SkipReason::NotExecutable));
                    continue;
                }
                Ok(_) => {}
                Err(_) => {
                    report.skipped.push(skip(SkipReason::NotAFile));
                    continue;
                }
            }
            match describe(&id, &path, options).await {
                Ok(description) => {
                    first.insert(id.clone(), path.clone());
                    report.found.push(DiscoveredPlugin {
                        id,
                        path,
                        description,
                    });
                }
                Err(PluginError::IdMismatch { described, .. }) => {
                    report
                        .skipped
                        .push(skip(SkipReason::IdMismatch { described }));
                }
                Err(e) => report.skipped.push(skip(SkipReason::DescribeFailed(e))),
            }
        }
    }
    report
}
