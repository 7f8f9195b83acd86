//! `.env` files (foreman's, compose's `env_file`): `KEY=value` lines, `export KEY=value`,
//! `#` comments, single quotes (literal), double quotes (`\n`, `\"`, `\\` escapes).

/// One variable and the line it was set on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    /// The name.
    pub key: String,
    /// The value, quotes removed.
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// A line that is not `KEY=value`: its line and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLineError {
    /// 1-based line.
    pub line: usize,
    /// What was expected.
    pub message: String,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Parses an env file. A later assignment of the same name wins (the earlier one is dropped).
pub fn parse(text: &str) -> Result<Vec<Var>, EnvLineError> {
    let mut vars: Vec<Var> = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, raw)) = lines.next() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let body = trimmed
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(trimmed);
        let bad = |message: String| EnvLineError { line, message };
        let Some((key, value)) = body.split_once('=') else {
            return Err(bad(format!(
                "expected `KEY=value`, found `{}`",
                truncate(trimmed)
            )));
        };
        let key = key.trim();
        if !valid_name(key) {
            return Err(bad(format!(
                "expected a variable name (letters, digits, `_`) before `=`, found `{key}`"
            )));
        }
        let value = value.trim_start();
        let value = if let Some(rest) = value.strip_prefix('"') {
            // A double-quoted value may run over several lines.
            let mut text = rest.to_owned();
            loop {
                if let Some(end) = closing_quote(&text) {
                    break unescape(&text[..end]);
                }
                match lines.next() {
                    Some((_, more)) => {
                        text.push('\n');
                        text.push_str(more);
                    }
                    None => return Err(bad("a double quote is not closed".into())),
                }
            }
        } else if let Some(rest) = value.strip_prefix('\'') {
            match rest.find('\'') {
                Some(end) => rest[..end].to_owned(),
                None => return Err(bad("a single quote is not closed".into())),
            }
        } else {
            // An unquoted value ends at ` #`.
            let end = value.find(" #").unwrap_or(value.len());
            value[..end].trim_end().to_owned()
        };
        vars.retain(|v| v.key != key);
        vars.push(Var {
            key: key.to_owned(),
            value,
            line,
        });
    }
    Ok(vars)
}

fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(c @ ('"' | '\\' | '$')) => out.push(c),
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// Whether a variable's name says it holds a secret (kinfra's rule for hiding values).
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL"]
        .iter()
        .any(|w| upper.contains(w))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let text = "# comment\nA=1\nexport B = two\nC=\"x \\\"y\\\"\\nz\"\nD='$lit'\nE=v # note\n\nA=3\nF=\"multi\nline\"\n";
        let vars = parse(text).unwrap();
        let get = |k: &str| vars.iter().find(|v| v.key == k).unwrap();
        assert_eq!(get("A").value, "3");
        assert_eq!(get("A").line, 8);
        assert_eq!(get("B").value, "two");
        assert_eq!(get("C").value, "x \"y\"\nz");
        assert_eq!(get("D").value, "$lit");
        assert_eq!(get("E").value, "v");
        assert_eq!(get("F").value, "multi\nline");
    }

    #[test]
    fn bad_lines_are_named() {
        let e = parse("A=1\nnot a var\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("KEY=value"), "{e:?}");
        let e = parse("A=\"open\n").unwrap_err();
        assert_eq!(e.line, 1);
    }
}
