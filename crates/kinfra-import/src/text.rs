//! Rewriting `$` forms for kinfra's `${...}` interpolation, and splitting command strings
//! into arguments the way compose does.
//!
//! kinfra resolves `${VAR}`, `${VAR:-default}` and `${PORT}` when it spawns a service, leaves
//! any other `$` alone, and reads `$$` as one `$`.

/// Whether `s` starts with `${PORT}` or `${PORT:-...}`: kinfra's own port reference, kept.
fn port_reference_len(s: &str) -> Option<usize> {
    if !(s.starts_with("${PORT}") || s.starts_with("${PORT:-")) {
        return None;
    }
    s.find('}').map(|end| end + 1)
}

/// A shell command (a Procfile line) that the shell must see unchanged: every `${` and `$$`
/// is escaped for kinfra (`$${HOME}` reaches the shell as `${HOME}`), except `${PORT}`, which
/// kinfra fills in with the service's port just as foreman's `$PORT` is.
pub fn shell_command(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if let Some(len) = port_reference_len(rest) {
            out.push_str(&rest[..len]);
            i += len;
            continue;
        }
        if rest.starts_with("$$") {
            out.push_str("$$$$");
            i += 2;
            continue;
        }
        let mut chars = rest.chars();
        let c = chars.next().unwrap_or('$');
        if c == '$' && chars.next() == Some('{') {
            out.push_str("$$");
        } else {
            out.push(c);
        }
        i += c.len_utf8();
    }
    out
}

/// Whether the command names the port: `$PORT`, `${PORT}`, `${PORT:-...}`.
pub fn uses_port(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices("$PORT").any(|(at, _)| {
        let next = bytes.get(at + 5);
        !next.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    }) || text.contains("${PORT}")
        || text.contains("${PORT:-")
}

/// A string that compose (or process-compose) interpolates from the environment, in kinfra's
/// forms: `$VAR` -> `${VAR}`, `${VAR-d}` -> `${VAR:-d}`, `${VAR:?message}` and `${VAR?m}`
/// -> `${VAR}` (kinfra refuses an unset one too); `$$` and `${VAR:-d}` stay. A form kinfra
/// has no equivalent for (`${VAR:+x}`, `${VAR+x}`) is escaped, kept as literal text, and
/// returned in the second value so the caller can report it.
pub fn compose_string(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut unmapped = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with("$$") {
            out.push_str("$$");
            i += 2;
            continue;
        }
        if let Some(body) = rest.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                // No closing brace: literal text.
                out.push_str("$$");
                i += 1;
                continue;
            };
            let inner = &body[..end];
            let name_len = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let (name, op) = inner.split_at(name_len);
            let rewritten = if name.is_empty() {
                None
            } else if op.is_empty() || op.starts_with(":-") {
                Some(format!("${{{inner}}}"))
            } else if let Some(default) = op.strip_prefix('-') {
                Some(format!("${{{name}:-{default}}}"))
            } else if op.starts_with(":?") || op.starts_with('?') {
                Some(format!("${{{name}}}"))
            } else {
                None
            };
            match rewritten {
                Some(r) => out.push_str(&r),
                None => {
                    unmapped.push(format!("${{{inner}}}"));
                    out.push_str(&format!("$${{{inner}}}"));
                }
            }
            i += 2 + end + 1;
            continue;
        }
        if let Some(body) = rest.strip_prefix('$') {
            let name_len = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(body.len());
            let name = &body[..name_len];
            if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) {
                out.push_str(&format!("${{{name}}}"));
                i += 1 + name_len;
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or('$');
        out.push(c);
        i += c.len_utf8();
    }
    (out, unmapped)
}

/// Splits a command string into arguments as a POSIX shell would, without expanding
/// anything: quotes group, backslashes escape. `None` when a quote is left open.
pub fn split_args(text: &str) -> Option<Vec<String>> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_arg = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_arg = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => current.push(c),
                    }
                }
            }
            '"' => {
                in_arg = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => current.push(c),
                            '\n' => {}
                            c => {
                                current.push('\\');
                                current.push(c);
                            }
                        },
                        c => current.push(c),
                    }
                }
            }
            '\\' => {
                in_arg = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => current.push(c),
                }
            }
            c if c.is_whitespace() => {
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            c => {
                in_arg = true;
                current.push(c);
            }
        }
    }
    if in_arg {
        args.push(current);
    }
    Some(args)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shell_commands_keep_port_and_escape_the_rest() {
        assert_eq!(
            shell_command("puma -p ${PORT} -e ${RACK_ENV:-development} $HOME $$"),
            "puma -p ${PORT} -e $${RACK_ENV:-development} $HOME $$$$"
        );
        assert_eq!(
            shell_command("node x --port ${PORT:-3000}"),
            "node x --port ${PORT:-3000}"
        );
        assert_eq!(shell_command("echo héllo $"), "echo héllo $");
    }

    #[test]
    fn port_use_is_found() {
        assert!(uses_port("bundle exec puma -p $PORT"));
        assert!(uses_port("x --port=${PORT}"));
        assert!(uses_port("x ${PORT:-5000}"));
        assert!(!uses_port("x $PORTAL"));
        assert!(!uses_port("sidekiq"));
    }

    #[test]
    fn compose_forms_become_kinfra_forms() {
        let (s, bad) = compose_string("a $USER ${DB:-x} ${A-b} ${REQ:?set it} $$ ${X:+y} $1");
        assert_eq!(s, "a ${USER} ${DB:-x} ${A:-b} ${REQ} $$ $${X:+y} $1");
        assert_eq!(bad, vec!["${X:+y}".to_owned()]);
    }

    #[test]
    fn arguments_split_like_a_shell() {
        assert_eq!(
            split_args(r#"redis-server --save "" --appendonly 'yes please' a\ b"#).unwrap(),
            vec![
                "redis-server",
                "--save",
                "",
                "--appendonly",
                "yes please",
                "a b"
            ]
        );
        assert!(split_args("echo 'open").is_none());
    }
}
