//! Key paths and the source map: where each key and value of a config was written.
//!
//! A key path is dotted, with list indexes in brackets: `services.api.port`,
//! `routes[0].service`, `services.api.args[2]`. A map key that is not made only of
//! `[A-Za-z0-9_-]` is written in double quotes: `services.api.env."A.B"`, `services.""`.

use std::collections::HashMap;

/// A 1-based line and column (the column counts characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A config text that could not be parsed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: Option<Pos>,
    pub message: String,
}

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

fn is_bare(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `path` followed by map key `key`.
pub(crate) fn join_key(path: &str, key: &str) -> String {
    let mut out = String::with_capacity(path.len() + key.len() + 3);
    out.push_str(path);
    if !path.is_empty() {
        out.push('.');
    }
    if is_bare(key) {
        out.push_str(key);
    } else {
        out.push('"');
        for c in key.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out
}

/// `path` followed by list index `index`.
pub(crate) fn join_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// Builds a path from segments.
pub(crate) fn path_of(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        out = match seg {
            Seg::Key(k) => join_key(&out, k),
            Seg::Index(i) => join_index(&out, *i),
        };
    }
    out
}

/// Splits a path written by [`join_key`] / [`join_index`] back into segments. Returns `None`
/// for text that is not such a path.
pub(crate) fn split_path(path: &str) -> Option<Vec<Seg>> {
    let mut segs = Vec::new();
    let mut chars = path.chars().peekable();
    let mut first = true;
    while let Some(&c) = chars.peek() {
        match c {
            '[' => {
                chars.next();
                let mut digits = String::new();
                loop {
                    match chars.next()? {
                        ']' => break,
                        d if d.is_ascii_digit() => digits.push(d),
                        _ => return None,
                    }
                }
                segs.push(Seg::Index(digits.parse().ok()?));
            }
            _ => {
                if !first {
                    if c != '.' {
                        return None;
                    }
                    chars.next();
                }
                if chars.peek() == Some(&'"') {
                    chars.next();
                    let mut key = String::new();
                    loop {
                        match chars.next()? {
                            '"' => break,
                            '\\' => key.push(chars.next()?),
                            other => key.push(other),
                        }
                    }
                    segs.push(Seg::Key(key));
                } else {
                    let mut key = String::new();
                    while let Some(&k) = chars.peek() {
                        if k == '.' || k == '[' {
                            break;
                        }
                        key.push(k);
                        chars.next();
                    }
                    if key.is_empty() {
                        return None;
                    }
                    segs.push(Seg::Key(key));
                }
            }
        }
        first = false;
    }
    Some(segs)
}

/// The path without its last segment; `None` for the root.
pub(crate) fn parent_path(path: &str) -> Option<String> {
    let mut segs = split_path(path)?;
    segs.pop()?;
    Some(path_of(&segs))
}

/// Converts byte offsets of one text into line and column.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, starts }
    }

    /// The position of byte `offset` (clamped to the text, and to a character boundary).
    pub fn pos(&self, offset: usize) -> Pos {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.starts[line];
        let column = self.text[start..offset].chars().count() + 1;
        Pos {
            line: line + 1,
            column,
        }
    }
}

/// Where one key path came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Where the key was written (absent for list items and the root).
    pub key: Option<Pos>,
    /// Where the value starts.
    pub value: Option<Pos>,
    /// Set when the value came from somewhere other than the file: the environment
    /// variable's name.
    pub origin: Option<String>,
}

/// Which position of an entry a message should point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// The key (`port` in `port = 8080`).
    Key,
    /// The value (`8080`).
    Value,
}

/// A located key: the origin override (an environment variable) and a position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Located {
    pub origin: Option<String>,
    pub pos: Option<Pos>,
}

/// Key path -> where it was written.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceMap {
    entries: HashMap<String, Entry>,
}

impl SourceMap {
    pub fn set_key(&mut self, path: &str, pos: Pos) {
        self.entries.entry(path.to_owned()).or_default().key = Some(pos);
    }

    pub fn set_value(&mut self, path: &str, pos: Pos) {
        self.entries.entry(path.to_owned()).or_default().value = Some(pos);
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Forgets `path` and everything below it.
    pub fn remove_subtree(&mut self, path: &str) {
        self.entries
            .retain(|k, _| !(k == path || is_below(k, path)));
    }

    /// Marks `path` as coming from the environment variable `var`.
    pub fn set_origin(&mut self, path: &str, var: &str) {
        let entry = self.entries.entry(path.to_owned()).or_default();
        entry.origin = Some(var.to_owned());
        entry.key = None;
        entry.value = None;
    }

    /// Finds where `path` was written. A path that is not in the map (a default value, a key
    /// written under another name) is located at its nearest written ancestor's key.
    pub fn locate(&self, path: &str, anchor: Anchor) -> Located {
        let mut current = Some(path.to_owned());
        let mut exact = true;
        while let Some(p) = current {
            if let Some(entry) = self.entries.get(&p) {
                if let Some(origin) = &entry.origin {
                    return Located {
                        origin: Some(origin.clone()),
                        pos: None,
                    };
                }
                let pos = match (anchor, exact) {
                    (Anchor::Value, true) => entry.value.or(entry.key),
                    _ => entry.key.or(entry.value),
                };
                if pos.is_some() {
                    return Located { origin: None, pos };
                }
            }
            if p.is_empty() {
                break;
            }
            exact = false;
            current = parent_path(&p);
        }
        Located::default()
    }
}

/// True when `path` lies strictly below `ancestor`.
pub(crate) fn is_below(path: &str, ancestor: &str) -> bool {
    if ancestor.is_empty() {
        return !path.is_empty();
    }
    path.len() > ancestor.len()
        && path.starts_with(ancestor)
        && matches!(path.as_bytes()[ancestor.len()], b'.' | b'[')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        let segs = vec![
            Seg::Key("services".into()),
            Seg::Key("a.b".into()),
            Seg::Key("args".into()),
            Seg::Index(2),
            Seg::Key(String::new()),
            Seg::Key("q\"x".into()),
        ];
        let path = path_of(&segs);
        assert_eq!(path, r#"services."a.b".args[2].""."q\"x""#);
        assert_eq!(split_path(&path), Some(segs));
        assert_eq!(join_index("routes", 0), "routes[0]");
        assert_eq!(
            parent_path("routes[0].service").as_deref(),
            Some("routes[0]")
        );
        assert_eq!(parent_path("routes[0]").as_deref(), Some("routes"));
        assert_eq!(parent_path("routes").as_deref(), Some(""));
        assert_eq!(parent_path(""), None);
        assert!(is_below("routes[0]", "routes"));
        assert!(is_below("services.api.port", "services.api"));
        assert!(!is_below("services.apix", "services.api"));
    }

    #[test]
    fn line_index_counts_characters() {
        let text = "ab\nçé x\n";
        let idx = LineIndex::new(text);
        assert_eq!(idx.pos(0), Pos { line: 1, column: 1 });
        assert_eq!(idx.pos(3), Pos { line: 2, column: 1 });
        // 'x' is after two 2-byte characters and a space.
        assert_eq!(idx.pos(8), Pos { line: 2, column: 4 });
        assert_eq!(idx.pos(text.len()), Pos { line: 3, column: 1 });
    }

    #[test]
    fn locate_walks_up_and_honours_origins() {
        let mut map = SourceMap::default();
        map.set_key("services", Pos { line: 1, column: 1 });
        map.set_key("services.api", Pos { line: 2, column: 3 });
        map.set_value("services.api", Pos { line: 2, column: 8 });
        let at = map.locate("services.api.backoff.factor", Anchor::Value);
        assert_eq!(at.pos, Some(Pos { line: 2, column: 3 }));
        let at = map.locate("services.api", Anchor::Value);
        assert_eq!(at.pos, Some(Pos { line: 2, column: 8 }));
        map.set_origin("services.api.port", "KINFRA_SERVICES__API__PORT");
        let at = map.locate("services.api.port", Anchor::Value);
        assert_eq!(at.origin.as_deref(), Some("KINFRA_SERVICES__API__PORT"));
        assert_eq!(at.pos, None);
    }
}
