//! YAML text -> a tree that keeps the line of every node and key, built from `saphyr-parser`
//! events, so every key an import cannot map is reported at its line.
//!
//! Anchors, aliases and merge keys (`<<: *common`) are resolved, as compose files use them;
//! a merged key's line is the line where it was written (under the anchor).

use saphyr_parser::{Event, Parser, ScalarStyle, Span, StrInput};
use std::collections::HashMap;

/// Nesting deeper than this is rejected (it guards the stack).
const MAX_DEPTH: usize = 64;

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line.
    pub line: usize,
    /// What it holds.
    pub value: Value,
}

/// The contents of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// A scalar; `plain` when it was written without quotes (then `true`, `42` are typed).
    Scalar {
        /// The text.
        text: String,
        /// Written without quotes.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<Entry>),
}

/// One key of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// 1-based line of the key.
    pub line: usize,
    /// Its value.
    pub value: Node,
}

/// A YAML text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What was expected.
    pub message: String,
}

impl Node {
    /// The scalar's text (not for null, sequences or mappings).
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// An integer written plainly or quoted.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_str().and_then(|t| t.trim().parse().ok())
    }

    /// A number (seconds, factors) written plainly or quoted.
    pub fn as_f64(&self) -> Option<f64> {
        self.as_str().and_then(|t| t.trim().parse().ok())
    }

    /// `true` / `false` (YAML 1.2 core schema, plus the YAML 1.1 `yes`/`no` compose accepts).
    pub fn as_bool(&self) -> Option<bool> {
        match self.as_str()? {
            "true" | "True" | "TRUE" | "yes" | "Yes" | "on" => Some(true),
            "false" | "False" | "FALSE" | "no" | "No" | "off" => Some(false),
            _ => None,
        }
    }

    /// The mapping's entries.
    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The sequence's items.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// Whether the node is null.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }
}

/// Parses one YAML document. An empty text is an empty mapping.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
    };
    b.document()
}

struct Builder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    anchors: HashMap<usize, Node>,
}

fn line_of(span: &Span) -> usize {
    span.start.line()
}

fn err(span: &Span, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        line: span.start.line(),
        column: span.start.col() + 1,
        message: message.into(),
    }
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), SyntaxError> {
        match self.parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => Err(SyntaxError {
                line: e.marker().line(),
                column: e.marker().col() + 1,
                message: format!("invalid YAML: {}", e.info()),
            }),
            None => Err(SyntaxError {
                line: 1,
                column: 1,
                message: "invalid YAML: unexpected end of input".into(),
            }),
        }
    }

    fn document(&mut self) -> Result<Node, SyntaxError> {
        let mut root = None;
        loop {
            let (ev, span) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => break,
                Event::DocumentStart(_) => {
                    if root.is_some() {
                        return Err(err(
                            &span,
                            "one YAML document expected; remove the second `---`",
                        ));
                    }
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::DocumentEnd) {
                        root = Some(Node {
                            line: line_of(&span),
                            value: Value::Map(Vec::new()),
                        });
                    } else {
                        root = Some(self.node(ev, span, 0)?);
                    }
                }
                _ => return Err(err(&span, "invalid YAML: unexpected content")),
            }
        }
        Ok(root.unwrap_or(Node {
            line: 1,
            value: Value::Map(Vec::new()),
        }))
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }

    fn node(&mut self, ev: Event<'a>, span: Span, depth: usize) -> Result<Node, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(err(&span, "nested too deeply"));
        }
        let line = line_of(&span);
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                let plain = style == ScalarStyle::Plain;
                let value = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                let node = Node { line, value };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::Alias(id) => self
                .anchors
                .get(&id)
                .cloned()
                .ok_or_else(|| err(&span, "an alias (`*name`) of an unknown anchor")),
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, span, depth + 1)?);
                }
                let node = Node {
                    line,
                    value: Value::Seq(items),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<Entry> = Vec::new();
                let mut merged: Vec<Entry> = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    let key = match ev {
                        Event::MappingEnd => break,
                        Event::Scalar(text, _, _, _) => text.into_owned(),
                        _ => return Err(err(&span, "a mapping key must be a plain string")),
                    };
                    let (vev, vspan) = self.next()?;
                    let value = self.node(vev, vspan, depth + 1)?;
                    if key == "<<" {
                        let sources = match &value.value {
                            Value::Map(_) => vec![value],
                            Value::Seq(items) => items.clone(),
                            _ => {
                                return Err(err(
                                    &span,
                                    "a merge key (`<<`) takes a mapping or a list of mappings",
                                ));
                            }
                        };
                        for source in sources {
                            let Value::Map(more) = source.value else {
                                return Err(err(
                                    &span,
                                    "a merge key (`<<`) takes a mapping or a list of mappings",
                                ));
                            };
                            for entry in more {
                                if !merged.iter().any(|e| e.key == entry.key) {
                                    merged.push(entry);
                                }
                            }
                        }
                        continue;
                    }
                    if entries.iter().any(|e| e.key == key) {
                        return Err(err(&span, format!("duplicate key `{key}`")));
                    }
                    entries.push(Entry {
                        key,
                        line: line_of(&span),
                        value,
                    });
                }
                for entry in merged {
                    if !entries.iter().any(|e| e.key == entry.key) {
                        entries.push(entry);
                    }
                }
                let node = Node {
                    line,
                    value: Value::Map(entries),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            _ => Err(err(&span, "invalid YAML: unexpected event")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_lines() {
        let root = parse("a: 1\nb:\n  c: \"x\"\n  d: [1, 2]\n").unwrap();
        let map = root.as_map().unwrap();
        assert_eq!(map[0].key, "a");
        assert_eq!(map[0].line, 1);
        assert_eq!(map[1].line, 2);
        let b = &map[1].value;
        assert_eq!(b.as_map().unwrap()[0].line, 3);
        assert_eq!(b.get("c").unwrap().as_str(), Some("x"));
        assert_eq!(b.get("d").unwrap().as_seq().unwrap().len(), 2);
    }

    #[test]
    fn anchors_aliases_and_merge_keys_resolve() {
        let text = "x-common: &common\n  restart: always\n  image: a\nservices:\n  one:\n    <<: *common\n    image: b\n";
        let root = parse(text).unwrap();
        let one = root.get("services").unwrap().get("one").unwrap();
        assert_eq!(one.get("image").unwrap().as_str(), Some("b"));
        assert_eq!(one.get("restart").unwrap().as_str(), Some("always"));
        // The merged key keeps the line it was written at.
        let restart = one.as_map().unwrap().iter().find(|e| e.key == "restart");
        assert_eq!(restart.unwrap().line, 2);
    }

    #[test]
    fn syntax_errors_have_lines() {
        let e = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
        assert!(e.message.contains("invalid YAML"), "{e:?}");
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("duplicate key"));
    }

    #[test]
    fn nulls_and_quoted_scalars() {
        let root = parse("a:\nb: ~\nc: \"null\"\n").unwrap();
        assert!(root.get("a").unwrap().is_null());
        assert!(root.get("b").unwrap().is_null());
        assert_eq!(root.get("c").unwrap().as_str(), Some("null"));
    }
}
