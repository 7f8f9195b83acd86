//! TOML text -> generic tree plus source map, via `toml`'s spanned document parser.

use super::source::{LineIndex, SourceMap, SyntaxError, join_index, join_key};
use serde_json::{Map, Number, Value};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Parses a TOML document.
pub(crate) fn parse(text: &str) -> Result<(Value, SourceMap), SyntaxError> {
    let lines = LineIndex::new(text);
    let doc = DeTable::parse(text).map_err(|e| {
        let pos = lines.pos(e.span().map_or(0, |s| s.start));
        SyntaxError {
            pos: Some(pos),
            message: format!("invalid TOML: {}", e.message().trim_end()),
        }
    })?;
    let mut map = SourceMap::default();
    let value = table(doc.get_ref(), "", &lines, &mut map)?;
    Ok((value, map))
}

fn table(
    t: &DeTable<'_>,
    path: &str,
    lines: &LineIndex<'_>,
    map: &mut SourceMap,
) -> Result<Value, SyntaxError> {
    let mut out = Map::new();
    for (k, v) in t.iter() {
        let child = join_key(path, k.get_ref());
        map.set_key(&child, lines.pos(k.span().start));
        let value = spanned(v, &child, lines, map)?;
        out.insert(k.get_ref().to_string(), value);
    }
    Ok(Value::Object(out))
}

fn spanned(
    v: &Spanned<DeValue<'_>>,
    path: &str,
    lines: &LineIndex<'_>,
    map: &mut SourceMap,
) -> Result<Value, SyntaxError> {
    let pos = lines.pos(v.span().start);
    map.set_value(path, pos);
    Ok(match v.get_ref() {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str();
            if let Ok(n) = i64::from_str_radix(digits, i.radix()) {
                Value::Number(n.into())
            } else if let Ok(n) = u64::from_str_radix(digits, i.radix()) {
                Value::Number(n.into())
            } else {
                return Err(SyntaxError {
                    pos: Some(pos),
                    message: format!("integer `{i}` is out of range"),
                });
            }
        }
        DeValue::Float(f) => {
            let parsed: Option<f64> = f.as_str().replace('_', "").parse().ok();
            match parsed.and_then(Number::from_f64) {
                Some(n) => Value::Number(n),
                // inf and nan have no JSON form; keep the text so that a type error names it.
                None => Value::String(f.as_str().to_owned()),
            }
        }
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(spanned(item, &join_index(path, i), lines, map)?);
            }
            Value::Array(out)
        }
        DeValue::Table(t) => table(t, path, lines, map)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::source::{Anchor, Pos};
    use super::*;

    #[test]
    fn values_and_positions() {
        let text = "top = 1\n[services.api]\ncommand = \"x\"\nport = 0x1F\nbig = 1_000\n\
                    f = 2.5\nwhen = 1979-05-27\n[[routes]]\npath = \"/a\"\n[[routes]]\n  path = \"/b\"\n";
        let (v, map) = parse(text).unwrap();
        assert_eq!(v["services"]["api"]["port"], 31);
        assert_eq!(v["services"]["api"]["big"], 1000);
        assert_eq!(v["services"]["api"]["f"], 2.5);
        assert_eq!(v["services"]["api"]["when"], "1979-05-27");
        assert_eq!(v["routes"][1]["path"], "/b");
        let at = |p: &str, a| map.locate(p, a).pos.unwrap();
        assert_eq!(at("top", Anchor::Key), Pos { line: 1, column: 1 });
        assert_eq!(at("top", Anchor::Value), Pos { line: 1, column: 7 });
        assert_eq!(
            at("services.api.command", Anchor::Value),
            Pos {
                line: 3,
                column: 11
            }
        );
        assert_eq!(
            at("services.api", Anchor::Key),
            Pos {
                line: 2,
                column: 11
            }
        );
        assert_eq!(
            at("routes[1].path", Anchor::Key),
            Pos {
                line: 11,
                column: 3
            }
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("a = 1\nb = \n").unwrap_err();
        assert_eq!(err.pos.map(|p| p.line), Some(2));
        assert!(err.message.starts_with("invalid TOML"), "{}", err.message);
    }
}
