//! Loading, overriding and validating the runtime configuration.
//!
//! `kinfra.toml`, `kinfra.yaml` and `kinfra.json` share one schema ([`model`]). Errors name the
//! file, line, column and key.
//!
//! Loading runs in steps:
//!
//! 1. the text is parsed into a generic tree plus a source map (key path -> line and column);
//! 2. `KINFRA_A__B=value` environment variables override keys of the tree;
//! 3. the tree is deserialized into [`Config`]; each schema error (unknown key, wrong type,
//!    bad duration, ...) is reported at its key, and loading goes on past it to find more;
//! 4. semantic checks run ([`Config::validate`]): dependencies and cycles, routes, ports,
//!    listen addresses, probes, `${...}` references, names. They run once the schema errors
//!    are gone (on a config with holes they would report echoes of those errors).
//!
//! Keys are named by dotted paths with list indexes in brackets: `services.api.port`,
//! `routes[0].service`, `services.api.args[1]`; a map key with characters other than
//! `[A-Za-z0-9_-]` is quoted: `services.api.env."A.B"`.
//!
//! A resource with `provider = "..."` is a cloud resource: Docker-only keys are errors there,
//! and keys kinfra does not know are kept (`extra`) for the provider, which checks them at
//! `runtime up` and `plan`; `[providers]` holds `plugin_dirs` beside the instance tables.
//!
//! `${...}` references ([`interpolate`]) are resolved later, when a service is spawned;
//! loading only checks that they are well formed and name services and resources that exist.

pub mod interpolate;
pub mod model;
#[cfg(feature = "schema")]
pub mod schema;
pub mod types;

mod builder;
mod json_tree;
mod overrides;
mod source;
mod toml_tree;
mod validate;
mod value_de;
mod yaml_tree;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use builder::ConfigBuilder;
pub use model::*;
pub use types::*;

use serde_json::Value;
use source::{Anchor, Seg, SourceMap, SyntaxError, is_below, join_key, path_of};
use std::fmt;
use std::path::{Path, PathBuf};
use value_de::{SchemaError, ValueDeserializer};

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
    pub fn from_file_with_env(
        path: &Path,
        env: &[(String, String)],
    ) -> Result<Config, ConfigErrors> {
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
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Self::parse(&text, Format::from_path(path), &origin, &base_dir, env)
    }

    /// Parses config text in the given format, applies `KINFRA_*` overrides from `env`, and
    /// validates. `origin` names the source in messages; relative paths resolve against
    /// `base_dir`. Reports every problem found, not only the first.
    pub fn parse(
        text: &str,
        format: Format,
        origin: &str,
        base_dir: &Path,
        env: &[(String, String)],
    ) -> Result<Config, ConfigErrors> {
        let parsed = match format {
            Format::Toml => toml_tree::parse(text),
            Format::Yaml => yaml_tree::parse(text),
            Format::Json => json_tree::parse(text),
        };
        let (mut tree, mut map) = parsed.map_err(|e| syntax_error(origin, e))?;
        if !tree.is_object() {
            return Err(syntax_error(
                origin,
                SyntaxError {
                    pos: map.locate("", Anchor::Value).pos,
                    message: "the top level must be a table of sections (project, services, \
                              routes, ...)"
                        .into(),
                },
            )
            .into());
        }
        let mut errors = overrides::apply(&mut tree, &mut map, env);
        match deserialize(tree, &map, origin) {
            Ok(mut config) => {
                config.base_dir = base_dir.to_path_buf();
                config.origin = origin.to_owned();
                config.resolve_file_paths();
                errors.extend(
                    validate::check(&config)
                        .into_iter()
                        .map(|i| located(origin, &map, Some(&i.key), i.anchor, i.message)),
                );
                if errors.is_empty() {
                    return Ok(config);
                }
            }
            Err(more) => errors.extend(more),
        }
        Err(ConfigErrors(errors))
    }

    /// Checks an in-memory config (built in code, or changed after loading): the same
    /// semantic checks loading runs. Errors carry keys but no line numbers.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let origin = if self.origin.is_empty() {
            "<builder>"
        } else {
            self.origin.as_str()
        };
        let errors: Vec<ConfigError> = validate::check(self)
            .into_iter()
            .map(|i| ConfigError {
                origin: origin.to_owned(),
                line: None,
                column: None,
                key: Some(i.key).filter(|k| !k.is_empty()),
                message: i.message,
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// A path of this config (`[providers] plugin_dirs`, a `token_file`, ...) resolved
    /// against its base dir (the config file's directory); absolute paths stay as they are.
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// Makes the file paths of a loaded config absolute against its base dir (the config
    /// file's directory), so they mean the same whatever the runtime's working directory:
    /// `proxy.pages_dir`, the bus's key, credential and TLS files, `bus.nats_server` when it
    /// is a path (a bare name is looked up on PATH), and `acme.ca_roots`. Paths that are
    /// resolved where they are used (`plugin_dirs`, `token_file`, `working_dir`) stay.
    fn resolve_file_paths(&mut self) {
        let base = self.base_dir.clone();
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        if let Some(dir) = &mut self.proxy.pages_dir {
            resolve(dir);
        }
        let bus = &mut self.bus;
        for path in [
            &mut bus.nkey_file,
            &mut bus.credentials,
            &mut bus.tls_ca,
            &mut bus.tls_cert,
            &mut bus.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            resolve(path);
        }
        if let Some(path) = &mut bus.nats_server
            && path.components().count() > 1
        {
            resolve(path);
        }
        if let Some(acme) = &mut self.acme {
            acme.ca_roots.iter_mut().for_each(resolve);
        }
    }

    /// `[providers] plugin_dirs`, resolved against the config file's directory.
    pub fn provider_plugin_dirs(&self) -> Vec<PathBuf> {
        self.providers
            .plugin_dirs
            .iter()
            .map(|dir| self.resolve_path(dir))
            .collect()
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

/// A key path in the config's dotted form (`resources.db.status`; a segment with characters
/// other than `[A-Za-z0-9_-]` is quoted), for [`locate_problems`].
pub fn key_path(segments: &[&str]) -> String {
    segments
        .iter()
        .fold(String::new(), |path, segment| join_key(&path, segment))
}

/// Locates problems found after loading (a provider's check of its resources' keys) in the
/// config text they came from, as loading locates its own: each `(key path, message)` becomes
/// a [`ConfigError`] at the key's line and column, or at its nearest written ancestor (the
/// table) when the key itself was not written; a key set by a `KINFRA_*` variable of `env`
/// names that variable. Text that does not parse gives errors without positions.
pub fn locate_problems(
    text: &str,
    format: Format,
    origin: &str,
    env: &[(String, String)],
    problems: impl IntoIterator<Item = (String, String)>,
) -> Vec<ConfigError> {
    let parsed = match format {
        Format::Toml => toml_tree::parse(text),
        Format::Yaml => yaml_tree::parse(text),
        Format::Json => json_tree::parse(text),
    };
    let map = match parsed {
        Ok((mut tree, mut map)) => {
            overrides::apply(&mut tree, &mut map, env);
            map
        }
        Err(_) => SourceMap::default(),
    };
    problems
        .into_iter()
        .map(|(key, message)| located(origin, &map, Some(&key), Anchor::Key, message))
        .collect()
}

fn syntax_error(origin: &str, e: SyntaxError) -> ConfigError {
    ConfigError {
        origin: origin.to_owned(),
        line: e.pos.map(|p| p.line),
        column: e.pos.map(|p| p.column),
        key: None,
        message: e.message,
    }
}

/// An error at `key`, located through the source map (an overridden key names its variable).
fn located(
    origin: &str,
    map: &SourceMap,
    key: Option<&str>,
    anchor: Anchor,
    message: String,
) -> ConfigError {
    let at = key.map(|k| {
        // `cwd` is another name for `working_dir`.
        match k.strip_suffix(".working_dir") {
            Some(parent) if map.get(k).is_none() => {
                let alias = join_key(parent, "cwd");
                if map.get(&alias).is_some() {
                    return map.locate(&alias, anchor);
                }
                map.locate(k, anchor)
            }
            _ => map.locate(k, anchor),
        }
    });
    let at = at.unwrap_or_default();
    ConfigError {
        origin: at.origin.unwrap_or_else(|| origin.to_owned()),
        line: at.pos.map(|p| p.line),
        column: at.pos.map(|p| p.column),
        key: key.filter(|k| !k.is_empty()).map(str::to_owned),
        message,
    }
}

/// Deserialization gives up after this many errors.
const MAX_SCHEMA_ERRORS: usize = 50;

/// Deserializes the tree, reporting each schema error at its key. After an error the
/// offending part of the tree is dropped and deserialization runs again, so one pass reports
/// every independent problem.
fn deserialize(mut tree: Value, map: &SourceMap, origin: &str) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..MAX_SCHEMA_ERRORS {
        let err = match serde_path_to_error::deserialize::<_, Config>(ValueDeserializer::new(
            tree.clone(),
        )) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => {
                sort_by_position(&mut errors);
                return Err(errors);
            }
            Err(e) => e,
        };
        let mut segs: Vec<Seg> = err
            .path()
            .iter()
            .map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => Seg::Index(*index),
                serde_path_to_error::Segment::Map { key } => Seg::Key(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Seg::Key(variant.clone()),
                serde_path_to_error::Segment::Unknown => Seg::Key("?".into()),
            })
            .collect();
        let path = path_of(&segs);
        match err.into_inner() {
            SchemaError::MissingField(field) => {
                let missing = join_key(&path, field);
                let caused_by_removal = removed
                    .iter()
                    .any(|r| *r == missing || is_below(r, &missing));
                if !caused_by_removal {
                    let key = Some(path.as_str()).filter(|p| !p.is_empty());
                    errors.push(located(
                        origin,
                        map,
                        key,
                        Anchor::Key,
                        format!("missing required key `{field}`"),
                    ));
                }
            }
            SchemaError::UnknownField { field, expected } => {
                // A table read whole before it is judged (a resource, whose keys mean
                // different things with `provider`) reports an unknown key from the table
                // itself: the key goes on the path here.
                if segs.last() != Some(&Seg::Key(field.clone())) {
                    segs.push(Seg::Key(field.clone()));
                }
                let path = path_of(&segs);
                let parent = segs
                    .split_last()
                    .map(|(_, rest)| path_of(rest))
                    .unwrap_or_default();
                errors.push(located(
                    origin,
                    map,
                    Some(&path),
                    Anchor::Key,
                    unknown_key_message(&field, expected, &parent),
                ));
            }
            other => {
                let key = Some(path.as_str()).filter(|p| !p.is_empty());
                errors.push(located(origin, map, key, Anchor::Value, describe(other)));
            }
        }
        // Drop what failed and try again. A list item is dropped with its whole list, so that
        // the indexes of later errors still match the file.
        let mut target = segs;
        while matches!(target.last(), Some(Seg::Index(_))) {
            target.pop();
        }
        if target.is_empty() || !remove(&mut tree, &target) {
            break;
        }
        removed.push(path_of(&target));
    }
    if errors.is_empty() {
        errors.push(ConfigError {
            origin: origin.to_owned(),
            line: None,
            column: None,
            key: None,
            message: "the config does not match the schema".into(),
        });
    }
    sort_by_position(&mut errors);
    Err(errors)
}

/// Orders errors as they appear in the file; those from elsewhere (the environment) last.
fn sort_by_position(errors: &mut [ConfigError]) {
    errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
}

/// Removes the node at `segs`; false when there is none.
fn remove(tree: &mut Value, segs: &[Seg]) -> bool {
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut node = tree;
    for seg in parents {
        let next = match (seg, node) {
            (Seg::Key(k), Value::Object(o)) => o.get_mut(k),
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match (last, node) {
        (Seg::Key(k), Value::Object(o)) => o.remove(k).is_some(),
        _ => false,
    }
}

/// Edit distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn did_you_mean(word: &str, choices: &[&str]) -> String {
    let best = choices
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min();
    match best {
        Some((_, c)) => format!(" (did you mean `{c}`?)"),
        None => String::new(),
    }
}

/// An unknown key: a sentence naming where it is and what fits there.
fn unknown_key_message(name: &str, expected: &[&str], parent: &str) -> String {
    let place = if parent.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in {parent}")
    };
    if expected.is_empty() {
        return format!("unknown key `{name}` {place}; it takes no keys");
    }
    format!(
        "unknown key `{name}` {place}; expected one of: {}{}",
        expected.join(", "),
        did_you_mean(name, expected)
    )
}

/// A schema error other than a missing or unknown key, in config words.
fn describe(error: SchemaError) -> String {
    match error {
        SchemaError::UnknownVariant { variant, expected } => format!(
            "unknown value `{variant}`; expected one of: {}{}",
            expected.join(", "),
            did_you_mean(&variant, expected)
        ),
        SchemaError::InvalidType { found, expected } => {
            format!(
                "wrong type: expected {}, found {found}",
                expected_words(&expected)
            )
        }
        SchemaError::InvalidValue { found, expected } => {
            format!(
                "invalid value: {found}, expected {}",
                expected_words(&expected)
            )
        }
        SchemaError::InvalidLength { len, expected } => {
            format!(
                "invalid length {len}, expected {}",
                expected_words(&expected)
            )
        }
        SchemaError::MissingField(field) => format!("missing required key `{field}`"),
        SchemaError::UnknownField { field, .. } => format!("unknown key `{field}`"),
        SchemaError::Custom(message) => message,
    }
}

/// What a serde visitor expects, where it speaks Rust rather than config: serde's primitive
/// and collection visitors name Rust types (`u16`, `struct ProbeConfig`, `a sequence`).
fn expected_words(expected: &str) -> &str {
    match expected {
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a map" => "a table",
        "a sequence" => "a list",
        other if other.starts_with("struct ") => "a table",
        other => other,
    }
}
