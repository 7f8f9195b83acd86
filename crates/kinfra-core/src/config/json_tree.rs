//! JSON text -> generic tree plus source map, with a small position-tracking parser.
//!
//! Strict JSON (RFC 8259): no comments, no trailing commas. Duplicate keys are rejected.

use super::source::{LineIndex, SourceMap, SyntaxError, join_index, join_key};
use serde_json::{Map, Number, Value};

/// Nesting deeper than this is rejected (a config is never this deep; it guards the stack).
const MAX_DEPTH: usize = 128;

/// Parses a JSON document.
pub(crate) fn parse(text: &str) -> Result<(Value, SourceMap), SyntaxError> {
    let mut p = JsonParser {
        text,
        bytes: text.as_bytes(),
        at: 0,
        lines: LineIndex::new(text),
        map: SourceMap::default(),
    };
    p.skip_ws();
    let value = p.value("", 0)?;
    p.skip_ws();
    if p.at < p.bytes.len() {
        return Err(p.error_at(p.at, "unexpected text after the JSON value"));
    }
    Ok((value, p.map))
}

struct JsonParser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    lines: LineIndex<'a>,
    map: SourceMap,
}

impl JsonParser<'_> {
    fn error_at(&self, offset: usize, message: impl AsRef<str>) -> SyntaxError {
        SyntaxError {
            pos: Some(self.lines.pos(offset)),
            message: format!("invalid JSON: {}", message.as_ref()),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), SyntaxError> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.unexpected(what))
        }
    }

    fn unexpected(&self, what: &str) -> SyntaxError {
        match self.text[self.at..].chars().next() {
            Some(c) => self.error_at(self.at, format!("expected {what}, found `{c}`")),
            None => self.error_at(
                self.at,
                format!("expected {what}, found the end of the text"),
            ),
        }
    }

    fn value(&mut self, path: &str, depth: usize) -> Result<Value, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error_at(self.at, "nested too deeply"));
        }
        let start = self.at;
        self.map.set_value(path, self.lines.pos(start));
        match self.peek() {
            Some(b'{') => self.object(path, depth),
            Some(b'[') => self.array(path, depth),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.unexpected("a value")),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, SyntaxError> {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.unexpected("a value"))
        }
    }

    fn object(&mut self, path: &str, depth: usize) -> Result<Value, SyntaxError> {
        self.at += 1;
        let mut out = Map::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(out));
        }
        loop {
            self.skip_ws();
            let key_at = self.at;
            if self.peek() != Some(b'"') {
                return Err(self.unexpected("a key in double quotes"));
            }
            let key = self.string()?;
            if out.contains_key(&key) {
                return Err(self.error_at(key_at, format!("duplicate key `{key}`")));
            }
            let child = join_key(path, &key);
            self.map.set_key(&child, self.lines.pos(key_at));
            self.skip_ws();
            self.expect(b':', "`:`")?;
            self.skip_ws();
            let value = self.value(&child, depth + 1)?;
            out.insert(key, value);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(out));
                }
                _ => return Err(self.unexpected("`,` or `}`")),
            }
        }
    }

    fn array(&mut self, path: &str, depth: usize) -> Result<Value, SyntaxError> {
        self.at += 1;
        let mut out = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(out));
        }
        loop {
            self.skip_ws();
            let child = join_index(path, out.len());
            out.push(self.value(&child, depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(out));
                }
                _ => return Err(self.unexpected("`,` or `]`")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let digits = self.text.get(self.at..self.at + 4).unwrap_or("");
        match u32::from_str_radix(digits, 16) {
            Ok(n) if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_hexdigit()) => {
                self.at += 4;
                Ok(n)
            }
            _ => Err(self.error_at(self.at, "expected four hex digits after `\\u`")),
        }
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let open = self.at;
        self.at += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.text[self.at..].chars().next() else {
                return Err(self.error_at(open, "unterminated string"));
            };
            match c {
                '"' => {
                    self.at += 1;
                    return Ok(out);
                }
                '\\' => {
                    let esc_at = self.at;
                    self.at += 1;
                    let Some(e) = self.peek() else {
                        return Err(self.error_at(open, "unterminated string"));
                    };
                    self.at += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.text[self.at..].starts_with("\\u") {
                                    return Err(self.error_at(esc_at, "unpaired surrogate"));
                                }
                                self.at += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.error_at(esc_at, "unpaired surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(code) {
                                Some(ch) => out.push(ch),
                                None => {
                                    return Err(self.error_at(esc_at, "invalid \\u escape"));
                                }
                            }
                        }
                        _ => return Err(self.error_at(esc_at, "invalid escape")),
                    }
                }
                c if (c as u32) < 0x20 => {
                    return Err(self.error_at(
                        self.at,
                        "control character in string (write it as an escape such as \\n)",
                    ));
                }
                c => {
                    out.push(c);
                    self.at += c.len_utf8();
                }
            }
        }
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits = |p: &mut Self| {
            let s = p.at;
            while let Some(b'0'..=b'9') = p.peek() {
                p.at += 1;
            }
            p.at - s
        };
        let int_start = self.at;
        let int_len = digits(self);
        if int_len == 0 || (int_len > 1 && self.bytes[int_start] == b'0') {
            return Err(self.error_at(start, "invalid number"));
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            float = true;
            if digits(self) == 0 {
                return Err(self.error_at(start, "invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            float = true;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(self.error_at(start, "invalid number"));
            }
        }
        let text = &self.text[start..self.at];
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
            .ok_or_else(|| self.error_at(start, format!("number `{text}` is out of range")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::source::{Anchor, Pos};
    use super::*;

    #[test]
    fn parses_like_serde_json() {
        let text = r#"{"a": [1, -2, 3.5, 1e2, true, false, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "o": {}}"#;
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
            ("{\"a\": 1,}", 1, 9, "expected a key"),
            ("{\"a\": 1\n \"b\": 2}", 2, 2, "expected `,` or `}`"),
            ("{\"a\": tru}", 1, 7, "expected a value"),
            ("{\"a\": \"x}", 1, 7, "unterminated string"),
            ("{\"a\": 1, \"a\": 2}", 1, 10, "duplicate key `a`"),
            ("{\"a\": 01}", 1, 7, "invalid number"),
            ("{} x", 1, 4, "unexpected text"),
            ("", 1, 1, "expected a value"),
        ];
        for (text, line, column, fragment) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.pos, Some(Pos { line, column }), "{text}: {}", e.message);
            assert!(e.message.contains(fragment), "{text}: {}", e.message);
        }
    }
}
