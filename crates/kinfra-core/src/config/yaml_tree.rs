//! YAML text -> generic tree plus source map, built from `saphyr-parser` events.
//!
//! Plain scalars are typed by the YAML 1.2 core schema (`true`, `42`, `0x1f`, `1.5`, `~`);
//! quoted scalars are strings, so `"8080"` stays a string and `no` is the string `no`. Tags
//! are ignored. Aliases (`*name`) and merge keys are rejected; a stream holds one document.

use super::source::{Pos, SourceMap, SyntaxError, join_index, join_key};
use saphyr_parser::{Event, Parser, ScalarStyle, Span, StrInput};
use serde_json::{Map, Number, Value};

/// Nesting deeper than this is rejected (a config is never this deep; it guards the stack).
const MAX_DEPTH: usize = 128;

/// Parses a YAML document. An empty document is an empty map.
pub(crate) fn parse(text: &str) -> Result<(Value, SourceMap), SyntaxError> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        map: SourceMap::default(),
    };
    let value = b.document()?;
    Ok((value, b.map))
}

struct Builder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    map: SourceMap,
}

fn pos(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

fn err(span: &Span, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        pos: Some(pos(span)),
        message: message.into(),
    }
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), SyntaxError> {
        match self.parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => Err(SyntaxError {
                pos: Some(Pos {
                    line: e.marker().line(),
                    column: e.marker().col() + 1,
                }),
                message: format!("invalid YAML: {}", e.info()),
            }),
            None => Err(SyntaxError {
                pos: None,
                message: "invalid YAML: unexpected end of input".into(),
            }),
        }
    }

    fn document(&mut self) -> Result<Value, SyntaxError> {
        let mut value = None;
        loop {
            let (ev, span) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => break,
                Event::DocumentStart(_) => {
                    if value.is_some() {
                        return Err(err(
                            &span,
                            "a config file holds one YAML document; remove the second `---`",
                        ));
                    }
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::DocumentEnd) {
                        value = Some(Value::Object(Map::new()));
                    } else {
                        value = Some(self.node(ev, span, "", 0)?);
                    }
                }
                _ => return Err(err(&span, "invalid YAML: unexpected content")),
            }
        }
        Ok(value.unwrap_or_else(|| Value::Object(Map::new())))
    }

    fn node(
        &mut self,
        ev: Event<'a>,
        span: Span,
        path: &str,
        depth: usize,
    ) -> Result<Value, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(err(&span, "nested too deeply"));
        }
        self.map.set_value(path, pos(&span));
        match ev {
            Event::Scalar(text, style, _, tag) => {
                // `!!str 123` is the string "123"; other tags are ignored.
                if tag.is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str") {
                    Ok(Value::String(text.into_owned()))
                } else {
                    Ok(scalar(&text, style))
                }
            }
            Event::Alias(_) => Err(err(
                &span,
                "YAML aliases (`*name`) are not supported in kinfra config; write the value out",
            )),
            Event::SequenceStart(_, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    let child = join_index(path, items.len());
                    items.push(self.node(ev, span, &child, depth + 1)?);
                }
                Ok(Value::Array(items))
            }
            Event::MappingStart(_, _) => {
                let mut out = Map::new();
                loop {
                    let (ev, span) = self.next()?;
                    let key = match ev {
                        Event::MappingEnd => break,
                        Event::Scalar(text, _, _, _) => text.into_owned(),
                        Event::Alias(_) => {
                            return Err(err(
                                &span,
                                "YAML aliases (`*name`) are not supported in kinfra config",
                            ));
                        }
                        _ => {
                            return Err(err(&span, "map keys must be plain strings"));
                        }
                    };
                    if key == "<<" {
                        return Err(err(
                            &span,
                            "YAML merge keys (`<<`) are not supported in kinfra config",
                        ));
                    }
                    if out.contains_key(&key) {
                        return Err(err(&span, format!("duplicate key `{key}`")));
                    }
                    let child = join_key(path, &key);
                    self.map.set_key(&child, pos(&span));
                    let (ev, vspan) = self.next()?;
                    let value = self.node(ev, vspan, &child, depth + 1)?;
                    out.insert(key, value);
                }
                Ok(Value::Object(out))
            }
            _ => Err(err(&span, "invalid YAML: unexpected event")),
        }
    }
}

/// Types a scalar by the YAML 1.2 core schema.
fn scalar(text: &str, style: ScalarStyle) -> Value {
    if style != ScalarStyle::Plain {
        return Value::String(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = integer(text) {
        return Value::Number(n);
    }
    if is_float(text)
        && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64)
    {
        return Value::Number(n);
    }
    Value::String(text.to_owned())
}

fn integer(text: &str) -> Option<Number> {
    let prefixed = |p: &str| {
        text.strip_prefix(p)
            .filter(|d| !d.is_empty() && !d.starts_with(['-', '+']))
    };
    let (radix, digits) = if let Some(hex) = prefixed("0x") {
        (16, hex)
    } else if let Some(oct) = prefixed("0o") {
        (8, oct)
    } else {
        let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
        if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        (10, text)
    };
    if let Ok(n) = i64::from_str_radix(digits, radix) {
        return Some(n.into());
    }
    u64::from_str_radix(digits, radix).ok().map(Number::from)
}

fn is_float(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match frac {
        Some(f) => digits(int) && digits(f) && !(int.is_empty() && f.is_empty()),
        None => !int.is_empty() && digits(int),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::source::Anchor;
    use super::*;

    #[test]
    fn typing_follows_the_core_schema() {
        let text = "a: 1\nb: \"1\"\nc: no\nd: true\ne: 1.5\nf: ~\ng: 0x10\nh: 2s\ni: -3\nj: 1e3\nk: '.5'\nl: !!str 8080\n";
        let (v, _) = parse(text).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"], "1");
        assert_eq!(v["c"], "no");
        assert_eq!(v["d"], true);
        assert_eq!(v["e"], 1.5);
        assert_eq!(v["f"], Value::Null);
        assert_eq!(v["g"], 16);
        assert_eq!(v["h"], "2s");
        assert_eq!(v["i"], -3);
        assert_eq!(v["j"], 1000.0);
        assert_eq!(v["k"], ".5");
        assert_eq!(v["l"], "8080");
    }

    #[test]
    fn positions_of_keys_and_values() {
        let text = "services:\n  api:\n    port: 80\nroutes:\n  - path: /a\n    service: api\n";
        let (v, map) = parse(text).unwrap();
        assert_eq!(v["routes"][0]["service"], "api");
        let at = |p: &str, a| map.locate(p, a).pos.unwrap();
        assert_eq!(
            at("services.api.port", Anchor::Key),
            Pos { line: 3, column: 5 }
        );
        assert_eq!(
            at("services.api.port", Anchor::Value),
            Pos {
                line: 3,
                column: 11
            }
        );
        assert_eq!(
            at("routes[0].service", Anchor::Key),
            Pos { line: 6, column: 5 }
        );
    }

    #[test]
    fn rejects_aliases_duplicates_and_bad_syntax() {
        let e = parse("a: &x 1\nb: *x\n").unwrap_err();
        assert!(e.message.contains("aliases"), "{}", e.message);
        assert_eq!(e.pos.map(|p| p.line), Some(2));
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
        assert_eq!(e.pos, Some(Pos { line: 2, column: 1 }));
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{}", e.message);
        assert!(e.pos.is_some());
        assert_eq!(parse("").unwrap().0, Value::Object(Map::new()));
    }
}
