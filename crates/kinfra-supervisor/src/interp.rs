//! `${...}` interpolation in service commands, arguments and environment values.
//!
//! A private stand-in until `kinfra_core::config::interpolate` lands: `${PORT}` (the service's
//! own port), `${services.NAME.port}` and `${VAR}` (service env, global env, then kinfra's
//! own environment). `$${` is a literal `${`. An unknown `${VAR}` is left as written, so a
//! shell command's own variables still reach the shell; an unknown service port is an error.

/// Looks up a reference: `Ok(Some)` to substitute, `Ok(None)` to leave as written.
pub type Lookup<'a> = dyn Fn(&str) -> Result<Option<String>, String> + 'a;

/// Replaces every `${name}` in `text` through `lookup`.
pub fn interpolate(text: &str, lookup: &Lookup<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(lit) = after.strip_prefix("${") {
            out.push_str("${");
            rest = lit;
            continue;
        }
        if let Some(inner) = after.strip_prefix('{')
            && let Some(end) = inner.find('}')
        {
            let name = &inner[..end];
            match lookup(name)? {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("${");
                    out.push_str(name);
                    out.push('}');
                }
            }
            rest = &inner[end + 1..];
            continue;
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// The service name in `services.NAME.port`, if `reference` has that form.
pub fn service_port_ref(reference: &str) -> Option<&str> {
    reference
        .strip_prefix("services.")
        .and_then(|r| r.strip_suffix(".port"))
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(name: &str) -> Result<Option<String>, String> {
        match name {
            "PORT" => Ok(Some("8000".into())),
            "services.db.port" => Ok(Some("5432".into())),
            n if service_port_ref(n).is_some() => Err(format!("unknown service in `{n}`")),
            _ => Ok(None),
        }
    }

    #[test]
    fn substitutes_known_and_keeps_unknown() {
        assert_eq!(
            interpolate("serve --port ${PORT} --db ${services.db.port} ${HOME_X} $x $${PORT}", &look),
            Ok("serve --port 8000 --db 5432 ${HOME_X} $x ${PORT}".to_string())
        );
        assert!(interpolate("${services.nope.port}", &look).is_err());
        assert_eq!(interpolate("${unterminated", &look), Ok("${unterminated".into()));
    }
}
