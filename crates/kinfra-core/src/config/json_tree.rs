//! JSON text -> generic tree plus source map, via `jsonc-parser`'s positioned syntax tree.
//!
//! Strict JSON (RFC 8259): every JSONC and JSON5 extension of the parser is turned off (no
//! comments, no trailing commas, no single quotes, ...). Duplicate keys and raw control
//! characters in strings, which the parser lets through, are rejected here.

use super::source::{LineIndex, SourceMap, SyntaxError, join_index, join_key};
use jsonc_parser::ast::{self, ObjectPropName};
use jsonc_parser::common::Ranged;
use jsonc_parser::errors::{ParseError, ParseErrorKind};
use jsonc_parser::{CollectOptions, ParseOptions, ParseStringErrorKind};
use serde_json::{Map, Number, Value};

/// Nesting deeper than this is rejected (a config is never this deep; it guards the stack).
const MAX_DEPTH: usize = 128;

/// Parses a JSON document.
pub(crate) fn parse(text: &str) -> Result<(Value, SourceMap), SyntaxError> {
    let lines = LineIndex::new(text);
    let strict = ParseOptions {
        allow_comments: false,
        allow_loose_object_property_names: false,
        allow_trailing_commas: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    let parsed = jsonc_parser::parse_to_ast(text, &CollectOptions::default(), &strict)
        .map_err(|e| syntax_error(text, &lines, &e))?;
    let Some(root) = parsed.value else {
        return Err(SyntaxError {
            pos: Some(lines.pos(text.len())),
            message: "invalid JSON: expected a value, found the end of the text".into(),
        });
    };
    let mut tree = Tree {
        text,
        lines,
        map: SourceMap::default(),
    };
    let value = tree.value(&root, "", 0)?;
    Ok((value, tree.map))
}

struct Tree<'a> {
    text: &'a str,
    lines: LineIndex<'a>,
    map: SourceMap,
}

impl Tree<'_> {
    fn error_at(&self, offset: usize, message: impl AsRef<str>) -> SyntaxError {
        SyntaxError {
            pos: Some(self.lines.pos(offset)),
            message: format!("invalid JSON: {}", message.as_ref()),
        }
    }

    fn value(
        &mut self,
        node: &ast::Value<'_>,
        path: &str,
        depth: usize,
    ) -> Result<Value, SyntaxError> {
        let start = node.start();
        if depth > MAX_DEPTH {
            return Err(self.error_at(start, "nested too deeply"));
        }
        self.map.set_value(path, self.lines.pos(start));
        Ok(match node {
            ast::Value::StringLit(s) => Value::String(self.string(s)?),
            ast::Value::NumberLit(n) => self.number(n)?,
            ast::Value::BooleanLit(b) => Value::Bool(b.value),
            ast::Value::NullKeyword(_) => Value::Null,
            ast::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.elements.len());
                for (i, item) in items.elements.iter().enumerate() {
                    out.push(self.value(item, &join_index(path, i), depth + 1)?);
                }
                Value::Array(out)
            }
            ast::Value::Object(object) => {
                let mut out = Map::new();
                for prop in &object.properties {
                    let ObjectPropName::String(name) = &prop.name else {
                        // Loose (unquoted) names are turned off; the parser never yields one.
                        return Err(self.error_at(prop.start(), "expected a key in double quotes"));
                    };
                    let key = self.string(name)?;
                    if out.contains_key(&key) {
                        return Err(self.error_at(name.start(), format!("duplicate key `{key}`")));
                    }
                    let child = join_key(path, &key);
                    self.map.set_key(&child, self.lines.pos(name.start()));
                    let value = self.value(&prop.value, &child, depth + 1)?;
                    out.insert(key, value);
                }
                Value::Object(out)
            }
        })
    }

    /// The decoded string; a raw control character (which the parser accepts) is an error.
    fn string(&self, s: &ast::StringLit<'_>) -> Result<String, SyntaxError> {
        let raw = s.text(self.text);
        if let Some((at, _)) = raw.char_indices().find(|(_, c)| (*c as u32) < 0x20) {
            return Err(self.error_at(
                s.start() + at,
                "control character in string (write it as an escape such as \\n)",
            ));
        }
        Ok(s.value.to_string())
    }

    fn number(&self, n: &ast::NumberLit<'_>) -> Result<Value, SyntaxError> {
        let text = n.value;
        let float = text.contains(['.', 'e', 'E']);
        let number = if float {
            text.parse::<f64>().ok().and_then(Number::from_f64)
        } else if let Ok(n) = text.parse::<i64>() {
            Some(n.into())
        } else if let Ok(n) = text.parse::<u64>() {
            Some(n.into())
        } else {
            text.parse::<f64>().ok().and_then(Number::from_f64)
        };
        number
            .map(Value::Number)
            .ok_or_else(|| self.error_at(n.start(), format!("number `{text}` is out of range")))
    }
}

/// The parser's error in the words of the other formats' messages, at its position.
fn syntax_error(text: &str, lines: &LineIndex<'_>, e: &ParseError) -> SyntaxError {
    use ParseErrorKind as K;
    let range = e.range();
    let found = found_at(text, range.start);
    let mut at = range.start;
    let message = match e.kind() {
        K::TrailingCommasNotAllowed => {
            // Point at what follows the comma, which is where a key or value was expected.
            let after = next_token(text, range.end);
            at = after;
            match text[after..].chars().next() {
                Some(']') => "expected a value, found `]` (trailing commas are not allowed)".into(),
                _ => format!(
                    "expected a key in double quotes, found {} (trailing commas are not allowed)",
                    found_at(text, after)
                ),
            }
        }
        K::ExpectedStringObjectProperty | K::UnexpectedTokenInObject => {
            format!("expected a key in double quotes, found {found}")
        }
        K::ExpectedColonAfterObjectKey => format!("expected `:` after the key, found {found}"),
        K::ExpectedObjectValue => format!("expected a value after `:`, found {found}"),
        K::ExpectedComma => {
            // The parser points at the end of the item before; the `,` was due at what follows.
            at = next_token(text, range.start);
            format!("expected `,` between items, found {}", found_at(text, at))
        }
        K::MultipleRootJsonValues => "unexpected text after the JSON value".into(),
        K::UnterminatedArray => "unterminated list: expected `]`".into(),
        K::UnterminatedObject => "unterminated object: expected `}`".into(),
        K::CommentsNotAllowed | K::UnterminatedCommentBlock => {
            "comments are not allowed in JSON (kinfra.yaml and kinfra.toml take comments)".into()
        }
        K::SingleQuotedStringsNotAllowed => "strings must be in double quotes".into(),
        K::String(ParseStringErrorKind::UnterminatedStringLiteral) => "unterminated string".into(),
        K::String(
            ParseStringErrorKind::ExpectedFourHexDigits
            | ParseStringErrorKind::InvalidUnicodeEscapeSequence(_),
        ) => "invalid \\u escape: expected four hex digits of a Unicode character".into(),
        K::String(_) => "invalid escape".into(),
        K::ExpectedDigit
        | K::ExpectedDigitFollowingNegativeSign
        | K::ExpectedPlusMinusOrDigitInNumberLiteral
        | K::BareDecimalPointNumbersNotAllowed
        | K::HexadecimalNumbersNotAllowed
        | K::UnaryPlusNumbersNotAllowed
        | K::NonFiniteNumbersNotAllowed => format!("invalid number ({})", lower_first(e.kind())),
        K::NestingDepthExceeded => "nested too deeply".into(),
        K::UnexpectedCloseBrace
        | K::UnexpectedCloseBracket
        | K::UnexpectedColon
        | K::UnexpectedComma
        | K::UnexpectedWord
        | K::UnexpectedToken => format!("expected a value, found {found}"),
        // Added in a later version of the parser: its own words.
        #[allow(unreachable_patterns)]
        other => lower_first(other),
    };
    SyntaxError {
        pos: Some(lines.pos(at)),
        message: format!("invalid JSON: {message}"),
    }
}

/// The offset of the first non-whitespace character at or after `offset`.
fn next_token(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.get(offset..)
        .and_then(|rest| rest.find(|c: char| !c.is_whitespace()))
        .map_or(text.len(), |i| offset + i)
}

/// What is at `offset`, for "found ..." (a word whole, else one character).
fn found_at(text: &str, offset: usize) -> String {
    let rest = text.get(offset..).unwrap_or("");
    let word: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'))
        .take(20)
        .collect();
    if !word.is_empty() {
        return format!("`{word}`");
    }
    match rest.chars().next() {
        Some(c) => format!("`{c}`"),
        None => "the end of the text".into(),
    }
}

fn lower_first(kind: &ParseErrorKind) -> String {
    let text = kind.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::source::{Anchor, Pos};
    use super::*;

    #[test]
    fn parses_like_serde_json() {
        let text = r#"{"a": [1, -2, 3.5, 1e2, true, false, null, 18446744073709551615], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "o": {}}"#;
        let (v, _) = parse(text).unwrap();
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v, expected);
    }

    #[test]
    fn positions() {
        let text = "{\n  \"services\": {\n    \"api\": { \"port\": 80 }\n  },\n  \"routes\": [ {\"path\": \"/\"} ]\n}";
        let (_, map) = parse(text).unwrap();
        let at = |p: &str, a| map.locate(p, a).pos.unwrap();
        assert_eq!(at("services.api", Anchor::Key), Pos { line: 3, column: 5 });
        assert_eq!(
            at("services.api.port", Anchor::Value),
            Pos {
                line: 3,
                column: 22
            }
        );
        assert_eq!(
            at("routes[0].path", Anchor::Key),
            Pos {
                line: 5,
                column: 16
            }
        );
        assert_eq!(
            at("routes[0]", Anchor::Value),
            Pos {
                line: 5,
                column: 15
            }
        );
    }

    #[test]
    fn errors() {
        let cases = [
            ("{\"a\": 1,}", 1, 9, "expected a key in double quotes"),
            ("[1,\n ]", 2, 2, "expected a value, found `]`"),
            ("{\"a\": 1\n \"b\": 2}", 2, 2, "expected `,`"),
            ("{\"a\": tru}", 1, 7, "expected a value, found `tru`"),
            ("{\"a\": \"x}", 1, 7, "unterminated string"),
            ("{\"a\": 1, \"a\": 2}", 1, 10, "duplicate key `a`"),
            ("{\"a\": \"x\ty\"}", 1, 9, "control character in string"),
            ("{\"a\": \"\\x41\"}", 1, 8, "invalid escape"),
            ("{\"a\": 0x1F}", 1, 7, "invalid number"),
            ("{\"a\": 1} // note", 1, 10, "comments are not allowed"),
            ("{'a': 1}", 1, 2, "double quotes"),
            ("{a: 1}", 1, 2, "expected a key in double quotes"),
            ("{} x", 1, 4, "unexpected text"),
            ("", 1, 1, "expected a value"),
        ];
        let mut failures = Vec::new();
        for (text, line, column, fragment) in cases {
            let e = parse(text).unwrap_err();
            if e.pos != Some(Pos { line, column })
                || !e.message.contains(fragment)
                || !e.message.starts_with("invalid JSON: ")
            {
                failures.push(format!(
                    "{text:?}: want {line}:{column} `{fragment}`, got {:?} {}",
                    e.pos, e.message
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(
            parse(&deep)
                .unwrap_err()
                .message
                .contains("nested too deeply")
        );
    }
}
