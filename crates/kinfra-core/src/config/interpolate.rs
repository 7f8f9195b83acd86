//! `${...}` references in config strings, resolved when a service is spawned.
//!
//! The forms are:
//!
//! | written                  | meaning                                         |
//! |--------------------------|-------------------------------------------------|
//! | `${PORT}`                | the port of the service the string belongs to   |
//! | `${services.NAME.port}`  | another service's port                          |
//! | `${resources.NAME.FIELD}`| a resource's `url`, `port`, ... (adapter-defined)|
//! | `${VAR}`                 | an environment variable                         |
//! | `${VAR:-default}`        | the variable, or `default` when it is unset     |
//! | `$$`                     | a literal `$`                                   |
//!
//! Any other `$` is left as it is, so `$HOME` in a shell command still reaches the shell.
//! Every form takes a `:-default`. Nested references (`${A:-${B}}`) are not supported.

use thiserror::Error;

/// One `${...}` reference, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `${PORT}`: the owning service's port.
    Port,
    /// `${services.NAME.port}`.
    ServicePort(String),
    /// `${resources.NAME.FIELD}`: resource name, field name.
    ResourceField(String, String),
    /// `${VAR}` or `${VAR:-default}`: variable name, default.
    Env(String, Option<String>),
}

/// A string that cannot be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InterpolationError {
    /// `${` without its `}`.
    #[error("unterminated `${{` at byte {offset}: add the closing `}}`")]
    Unterminated {
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// `${...}` whose contents are not one of the forms.
    #[error("invalid reference `${{{text}}}`: {reason}")]
    Invalid {
        /// What was between the braces.
        text: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A reference the lookup does not know, without a default.
    #[error("unknown variable `{name}` (set it, or give a default as in `${{{name}:-value}}`)")]
    Unknown {
        /// The name as written (`PORT`, `services.api.port`, `HOME`).
        name: String,
    },
}

/// A piece of a parsed string.
enum Piece<'a> {
    Text(&'a str),
    Dollar,
    Ref {
        name: &'a str,
        default: Option<&'a str>,
        reference: Reference,
    },
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn classify(inner: &str) -> Result<(&str, Option<&str>, Reference), InterpolationError> {
    let invalid = |reason: &str| InterpolationError::Invalid {
        text: inner.to_owned(),
        reason: reason.to_owned(),
    };
    if inner.contains("${") {
        return Err(invalid("nested references are not supported"));
    }
    let (name, default) = match inner.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (inner, None),
    };
    if name.is_empty() {
        return Err(invalid("empty name"));
    }
    let reference = if name.contains('.') {
        let parts: Vec<&str> = name.split('.').collect();
        match parts.as_slice() {
            ["services", svc, "port"] if is_object_name(svc) => {
                Reference::ServicePort((*svc).to_owned())
            }
            ["services", svc, field] if is_object_name(svc) => {
                return Err(invalid(&format!(
                    "services offer only `port`, not `{field}` (write `${{services.{svc}.port}}`)"
                )));
            }
            ["resources", res, field] if is_object_name(res) && is_ident(field) => {
                Reference::ResourceField((*res).to_owned(), (*field).to_owned())
            }
            _ => {
                return Err(invalid(
                    "expected `services.NAME.port`, `resources.NAME.FIELD` or a variable name",
                ));
            }
        }
    } else if !is_ident(name) {
        return Err(invalid(
            "a variable name is letters, digits and `_`, not starting with a digit",
        ));
    } else if name == "PORT" {
        Reference::Port
    } else {
        Reference::Env(name.to_owned(), default.map(str::to_owned))
    };
    Ok((name, default, reference))
}

fn pieces(text: &str) -> Result<Vec<Piece<'_>>, InterpolationError> {
    let mut out = Vec::new();
    let mut rest = 0;
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push(Piece::Text(&text[rest..i]));
                out.push(Piece::Dollar);
                i += 2;
                rest = i;
            }
            Some(b'{') => {
                let Some(close) = text[i + 2..].find('}') else {
                    return Err(InterpolationError::Unterminated { offset: i });
                };
                let inner = &text[i + 2..i + 2 + close];
                let (name, default, reference) = classify(inner)?;
                out.push(Piece::Text(&text[rest..i]));
                out.push(Piece::Ref {
                    name,
                    default,
                    reference,
                });
                i += 2 + close + 1;
                rest = i;
            }
            _ => i += 1,
        }
    }
    out.push(Piece::Text(&text[rest..]));
    Ok(out)
}

/// Lists the references in `text`, checking its syntax.
pub fn references(text: &str) -> Result<Vec<Reference>, InterpolationError> {
    Ok(pieces(text)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref { reference, .. } => Some(reference),
            _ => None,
        })
        .collect())
}

/// Like [`references`], with whether each reference has a `:-default`.
pub(crate) fn references_with_default(
    text: &str,
) -> Result<Vec<(Reference, bool)>, InterpolationError> {
    Ok(pieces(text)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref {
                reference, default, ..
            } => Some((reference, default.is_some())),
            _ => None,
        })
        .collect())
}

/// Replaces every reference in `text`. `lookup` gets the name as written (`PORT`,
/// `services.api.port`, `resources.db.url`, `HOME`) and returns its value, or `None` when it
/// is unknown, in which case the `:-default` is used, or the result is an error.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Dollar => out.push('$'),
            Piece::Ref { name, default, .. } => match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(InterpolationError::Unknown {
                        name: name.to_owned(),
                    });
                }
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("4100".into()),
            "services.db-api.port" => Some("4200".into()),
            "resources.db.url" => Some("postgres://127.0.0.1:5433/app".into()),
            "HOME" => Some("/home/k".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn every_form() {
        let cases = [
            ("serve --port ${PORT}", "serve --port 4100"),
            ("${services.db-api.port}", "4200"),
            (
                "url=${resources.db.url}",
                "url=postgres://127.0.0.1:5433/app",
            ),
            ("${HOME}/x", "/home/k/x"),
            ("${MISSING:-fallback}", "fallback"),
            ("${MISSING:-}", ""),
            ("${HOME:-fallback}", "/home/k"),
            ("${EMPTY:-fallback}", ""),
            ("cost $$5 and $$$$", "cost $5 and $$"),
            (
                "$HOME stays for the shell, $ too, and $",
                "$HOME stays for the shell, $ too, and $",
            ),
            ("$${PORT}", "${PORT}"),
            ("a${PORT}b${PORT}c", "a4100b4100c"),
            ("ünï ${PORT} çødé", "ünï 4100 çødé"),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(interpolate(text, &lookup).as_deref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn errors() {
        assert_eq!(
            interpolate("x ${NOPE} y", &lookup),
            Err(InterpolationError::Unknown {
                name: "NOPE".into()
            })
        );
        assert_eq!(
            interpolate("run ${PORT", &lookup),
            Err(InterpolationError::Unterminated { offset: 4 })
        );
        let bad = [
            "${}",
            "${services.api}",
            "${services.api.url}",
            "${resources.db}",
            "${foo.bar.baz}",
            "${1ABC}",
            "${A B}",
            "${A:-${B}}",
        ];
        for text in bad {
            assert!(
                matches!(
                    interpolate(text, &lookup),
                    Err(InterpolationError::Invalid { .. })
                ),
                "{text}"
            );
        }
        let msg = interpolate("${services.api.url}", &lookup)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("services offer only `port`"), "{msg}");
        let msg = interpolate("${X", &lookup).unwrap_err().to_string();
        assert_eq!(msg, "unterminated `${` at byte 0: add the closing `}`");
    }

    #[test]
    fn classification() {
        let refs = references(
            "${PORT} ${services.api.port} ${resources.db.port} ${HOME} ${LEVEL:-info} $$ $x",
        )
        .unwrap();
        assert_eq!(
            refs,
            vec![
                Reference::Port,
                Reference::ServicePort("api".into()),
                Reference::ResourceField("db".into(), "port".into()),
                Reference::Env("HOME".into(), None),
                Reference::Env("LEVEL".into(), Some("info".into())),
            ]
        );
        assert_eq!(references("plain $$ text"), Ok(vec![]));
        assert!(references("${oops").is_err());
    }
}
