//! The `cloudflared` config file (`config.yml`) written from kinfra's routes, and a check of
//! any such file against cloudflared's documented ingress rules (`specs/cloudflare/
//! cloudflared-ingress.md`: `ingress/ingress.go`'s `validateIngress` and `validateHostname`).
//!
//! Every rule's service is kinfra's own proxy (the origin), so the loading, 503 and maintenance
//! pages serve tunnel traffic too; cloudflared keeps the request's `Host` header by default
//! (no `httpHostHeader` is set), which is what kinfra's proxy routes by. The order: per public
//! hostname (exact names before wildcards, each in the order given), its path rules, more
//! specific before less specific (`/api/v1` before `/api`), then the hostname's own rule
//! without a path; last the catch-all `http_status:404`.
//!
//! The file is YAML written by hand in block style with every string as a JSON string (YAML
//! 1.2's double-quoted scalars take JSON's escapes), so no value can break the structure and
//! no YAML serializer is needed.

use kinfra_provider::http::Url;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The service of the last rule: what matches no hostname gets a 404 from the edge.
pub const CATCH_ALL_SERVICE: &str = "http_status:404";

/// One public entry point: a hostname, optionally only under a path prefix (a route's prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IngressRule {
    /// The public hostname (`app.example.com`, or `*.example.com`).
    pub hostname: String,
    /// The route's path prefix (`/api`), or `None` for the whole hostname.
    pub path_prefix: Option<String>,
}

impl IngressRule {
    /// The whole hostname.
    pub fn host(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            path_prefix: None,
        }
    }

    /// The hostname under `prefix` only.
    pub fn path(hostname: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            path_prefix: Some(prefix.into()),
        }
    }
}

/// What `config.yml` is written from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressConfig {
    /// The tunnel's UUID (`tunnel:`).
    pub tunnel_id: String,
    /// The tunnel's credentials file (`credentials-file:`); `None` when cloudflared runs with
    /// the tunnel's token instead.
    pub credentials_file: Option<PathBuf>,
    /// kinfra's proxy, the service of every rule: `http://127.0.0.1:PORT`.
    pub origin: String,
    /// Where cloudflared serves its metrics and `/ready` (`metrics:`), when set.
    pub metrics: Option<SocketAddr>,
    /// The public hostnames and path prefixes, in any order (see the module docs).
    pub rules: Vec<IngressRule>,
}

/// The config could not be written: every problem found, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cloudflared ingress config is invalid: {}", .problems.join("; "))]
pub struct IngressError {
    /// Each problem.
    pub problems: Vec<String>,
}

/// One rule as written: `hostname`, `path` (a regex), `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    hostname: Option<String>,
    path: Option<String>,
    service: String,
}

impl IngressConfig {
    /// The `config.yml` text, or every problem with the input (an empty tunnel id, an origin
    /// that is not `scheme://host[:port]`, a hostname with a port or a misplaced `*`, a path
    /// prefix not starting with `/`). The text is checked with [`validate`] before it is
    /// returned.
    pub fn render(&self) -> Result<String, IngressError> {
        let mut problems = Vec::new();
        if self.tunnel_id.trim().is_empty() {
            problems.push("the tunnel id is empty".to_owned());
        }
        if let Err(p) = check_url_service(&self.origin) {
            problems.push(format!("the origin (kinfra's proxy): {p}"));
        }
        let credentials = match &self.credentials_file {
            None => None,
            Some(path) => match path.to_str() {
                Some(text) => Some(text.to_owned()),
                None => {
                    problems.push(format!(
                        "the credentials file path {} is not UTF-8",
                        path.display()
                    ));
                    None
                }
            },
        };
        for rule in &self.rules {
            if rule.hostname.trim() == "*" {
                problems.push(
                    "hostname `*` would match every hostname (only the last, catch-all rule \
                     may); name the public hostnames"
                        .to_owned(),
                );
            } else if let Err(p) = check_hostname(&rule.hostname) {
                problems.push(p);
            }
            if let Some(prefix) = &rule.path_prefix
                && !prefix.starts_with('/')
            {
                problems.push(format!(
                    "the path prefix `{prefix}` of {} does not start with `/`",
                    rule.hostname
                ));
            }
        }
        if !problems.is_empty() {
            return Err(IngressError { problems });
        }
        let mut text = String::from(
            "# Written by kinfra from its routes; kinfra rewrites it on every change.\n\
             # Every rule points at kinfra's proxy, which routes by the Host header.\n",
        );
        let _ = writeln!(text, "tunnel: {}", quote(&self.tunnel_id));
        if let Some(path) = credentials {
            let _ = writeln!(text, "credentials-file: {}", quote(&path));
        }
        if let Some(addr) = self.metrics {
            let _ = writeln!(text, "metrics: {}", quote(&addr.to_string()));
        }
        // kinfra supervises the binary; an update under it would look like a crash.
        text.push_str("no-autoupdate: true\ningress:\n");
        for rule in self.ordered() {
            let mut first = true;
            let mut key = |text: &mut String, name: &str, value: &str| {
                let lead = if first { "  - " } else { "    " };
                first = false;
                let _ = writeln!(text, "{lead}{name}: {}", quote(value));
            };
            if let Some(h) = &rule.hostname {
                key(&mut text, "hostname", h);
            }
            if let Some(p) = &rule.path {
                key(&mut text, "path", p);
            }
            key(&mut text, "service", &rule.service);
        }
        let problems = validate(&text);
        if problems.is_empty() {
            Ok(text)
        } else {
            Err(IngressError { problems })
        }
    }

    /// The rules in the order they are written, the catch-all last.
    fn ordered(&self) -> Vec<Written> {
        // Hostnames are case-insensitive: one group per lowercased name, in first-seen order,
        // exact names before wildcards (a wildcard first would swallow them).
        let mut hosts: Vec<(String, Vec<String>, bool)> = Vec::new();
        for rule in &self.rules {
            let host = rule.hostname.trim().to_ascii_lowercase();
            let index = match hosts.iter().position(|(h, _, _)| *h == host) {
                Some(i) => i,
                None => {
                    hosts.push((host, Vec::new(), false));
                    hosts.len() - 1
                }
            };
            match rule.path_prefix.as_deref().map(normalize_prefix) {
                Some(Some(prefix)) => {
                    if !hosts[index].1.contains(&prefix) {
                        hosts[index].1.push(prefix);
                    }
                }
                // No prefix, or `/`: the whole hostname.
                _ => hosts[index].2 = true,
            }
        }
        hosts.sort_by_key(|(h, _, _)| h.starts_with('*'));
        let mut out = Vec::new();
        for (host, mut prefixes, _) in hosts {
            prefixes.sort_by(|a, b| {
                let depth = |p: &str| p.matches('/').count();
                depth(b)
                    .cmp(&depth(a))
                    .then(b.len().cmp(&a.len()))
                    .then(a.cmp(b))
            });
            for prefix in prefixes {
                out.push(Written {
                    hostname: Some(host.clone()),
                    path: Some(path_regex(&prefix)),
                    service: self.origin.clone(),
                });
            }
            // The hostname's own rule: kinfra's proxy answers the rest of it (its 404 page,
            // another route's prefix kinfra knows).
            out.push(Written {
                hostname: Some(host),
                path: None,
                service: self.origin.clone(),
            });
        }
        out.push(Written {
            hostname: None,
            path: None,
            service: CATCH_ALL_SERVICE.to_owned(),
        });
        out
    }
}

/// A path prefix without its trailing `/`s; `None` for the root (the whole hostname).
fn normalize_prefix(prefix: &str) -> Option<String> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        None
    } else {
        Some(trimmed.to_owned())
    }
}

/// The `path` regex of a route prefix: `/api` → `^/api(/|$)` (the prefix itself or anything
/// under it, not `/apix`), regex metacharacters escaped.
pub fn path_regex(prefix: &str) -> String {
    let mut out = String::from("^");
    for c in prefix.trim_end_matches('/').chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str("(/|$)");
    out
}

/// `text` as a YAML double-quoted scalar (a JSON string is one).
fn quote(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// A hostname cloudflared accepts in a rule: no port, `*` only as the whole first label.
fn check_hostname(hostname: &str) -> Result<(), String> {
    if hostname.trim().is_empty() {
        return Err("a rule has an empty hostname".to_owned());
    }
    if hostname.contains(':') {
        return Err(format!(
            "hostname `{hostname}`: Hostname cannot contain a port"
        ));
    }
    if hostname.contains(char::is_whitespace) || hostname.contains('/') {
        return Err(format!("hostname `{hostname}` is not a host name"));
    }
    let stars = hostname.matches('*').count();
    if stars > 1 || (stars == 1 && hostname != "*" && !hostname.starts_with("*.")) {
        return Err(format!(
            "hostname `{hostname}`: Hostname patterns can have at most one wildcard character \
             (\"*\") and it can only be used for subdomains, e.g. \"*.example.com\""
        ));
    }
    Ok(())
}

/// A URL service: a scheme and a host, no path.
fn check_url_service(service: &str) -> Result<(), String> {
    let invalid = || {
        format!(
            "`{service}` is an invalid address, please make sure it has a scheme and a hostname"
        )
    };
    if !service.contains("://") {
        return Err(invalid());
    }
    let url = Url::parse(service).map_err(|_| invalid())?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{service}`: ingress rules don't support proxying to a different path on the \
             origin service"
        ));
    }
    Ok(())
}

/// A rule's `service`, by cloudflared's forms.
fn check_service(service: &str) -> Result<(), String> {
    if let Some(code) = service.strip_prefix("http_status:") {
        return match code.parse::<u16>() {
            Ok(100..=999) => Ok(()),
            _ => Err(format!(
                "`{service}`: the status must be a number from 100 to 999"
            )),
        };
    }
    if matches!(
        service,
        "hello_world" | "hello-world" | "bastion" | "socks-proxy"
    ) {
        return Ok(());
    }
    if let Some(path) = service
        .strip_prefix("unix+tls:")
        .or_else(|| service.strip_prefix("unix:"))
    {
        return if path.is_empty() {
            Err(format!("`{service}`: no socket path"))
        } else {
            Ok(())
        };
    }
    check_url_service(service)
}

/// Every problem of a `config.yml` text against cloudflared's documented ingress rules (empty:
/// cloudflared would accept it): at least one rule; the last one a catch-all (no hostname or
/// `*`, no path) and no other; hostnames without a port and with `*` only as the first label;
/// paths that compile as regexes; each rule a `service` of one of cloudflared's forms (a URL
/// one with a scheme and a host and no path).
pub fn validate(text: &str) -> Vec<String> {
    let doc = match parse_yaml(text) {
        Ok(doc) => doc,
        Err(e) => return vec![e],
    };
    let Value::Object(top) = doc else {
        return vec!["the config is not a mapping of keys".to_owned()];
    };
    let mut problems = Vec::new();
    let rules = match top.get("ingress") {
        None | Some(Value::Null) => {
            return vec!["No ingress rules were defined (`ingress` is missing)".to_owned()];
        }
        Some(Value::Array(rules)) => rules,
        Some(_) => return vec!["`ingress` is not a list of rules".to_owned()],
    };
    if rules.is_empty() {
        return vec!["No ingress rules were defined (`ingress` is empty)".to_owned()];
    }
    let last = rules.len();
    for (i, rule) in rules.iter().enumerate() {
        let n = i + 1;
        let Value::Object(rule) = rule else {
            problems.push(format!("rule #{n} is not a mapping"));
            continue;
        };
        let field = |key: &str| -> Result<Option<String>, String> {
            match rule.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!("rule #{n}: `{key}` is not a string ({other})")),
            }
        };
        let (hostname, path, service) = match (field("hostname"), field("path"), field("service")) {
            (Ok(h), Ok(p), Ok(s)) => (h.filter(|h| !h.is_empty()), p.filter(|p| !p.is_empty()), s),
            (h, p, s) => {
                problems.extend([h.err(), p.err(), s.err()].into_iter().flatten());
                continue;
            }
        };
        match &service {
            None => problems.push(format!("rule #{n} has no `service`")),
            Some(s) => {
                if let Err(p) = check_service(s) {
                    problems.push(format!("rule #{n}: {p}"));
                }
            }
        }
        let every_host = hostname.as_deref().is_none_or(|h| h == "*");
        let catch_all = every_host && path.is_none();
        if n == last && !catch_all {
            problems.push(format!(
                "rule #{n}: The last ingress rule must match all URLs (i.e. it should not have \
                 a hostname or path filter)"
            ));
        }
        if n != last && catch_all {
            problems.push(format!(
                "Rule #{n} is matching the hostname '{}', but this will match every hostname, \
                 meaning the rules which follow it will never be triggered",
                hostname.as_deref().unwrap_or("")
            ));
        }
        if let Some(h) = &hostname
            && h != "*"
            && let Err(p) = check_hostname(h)
        {
            problems.push(format!("rule #{n}: {p}"));
        }
        if let Some(p) = &path
            && let Err(e) = regex::Regex::new(p)
        {
            problems.push(format!("Rule #{n} has an invalid regex `{p}`: {e}"));
        }
    }
    problems
}

/// One rule of a config file, as cloudflared reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRule {
    /// Its `hostname`, when it has one.
    pub hostname: Option<String>,
    /// Its `path` regex, when it has one.
    pub path: Option<String>,
    /// Its `service`.
    pub service: String,
}

/// The `ingress` rules of a `config.yml` text, in order (for showing a config, and for tests
/// that follow cloudflared's matching); an error when the text is not YAML, has no `ingress`
/// list, or a rule is not a mapping of strings with a `service`. Use [`validate`] for the
/// rules themselves.
pub fn parse_rules(text: &str) -> Result<Vec<ParsedRule>, String> {
    let doc = parse_yaml(text)?;
    let Some(Value::Array(rules)) = doc.get("ingress") else {
        return Err("no `ingress` list".to_owned());
    };
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let n = i + 1;
            let text = |key: &str| match rule.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("rule #{n}: `{key}` is not a string")),
            };
            Ok(ParsedRule {
                hostname: text("hostname")?,
                path: text("path")?,
                service: text("service")?.ok_or_else(|| format!("rule #{n} has no `service`"))?,
            })
        })
        .collect()
}

/// A YAML document as JSON: mappings with string keys, sequences, scalars (plain `~`/`null`/
/// empty are null, `true`/`false` booleans, everything else a string). Aliases and more than
/// one document are refused.
fn parse_yaml(text: &str) -> Result<Value, String> {
    use saphyr_parser::{Event, Parser, ScalarStyle};
    let mut parser = Parser::new_from_str(text);
    let mut next = move || match parser.next_event() {
        Some(Ok((event, span))) => Ok((event, span.start.line())),
        Some(Err(e)) => Err(format!(
            "invalid YAML at line {}: {}",
            e.marker().line(),
            e.info()
        )),
        None => Err("invalid YAML: unexpected end".to_owned()),
    };
    enum Open {
        Seq(Vec<Value>),
        Map(Map<String, Value>, Option<String>),
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut doc: Option<Value> = None;
    let mut documents = 0;
    loop {
        let (event, line) = next()?;
        let value = match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => continue,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err("more than one YAML document".to_owned());
                }
                continue;
            }
            Event::StreamEnd => break,
            Event::Alias(_) => return Err(format!("line {line}: YAML aliases are not supported")),
            Event::SequenceStart(..) => {
                stack.push(Open::Seq(Vec::new()));
                continue;
            }
            Event::MappingStart(..) => {
                stack.push(Open::Map(Map::new(), None));
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Open::Seq(items)) => Value::Array(items),
                _ => return Err(format!("line {line}: unbalanced sequence")),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Open::Map(map, None)) => Value::Object(map),
                _ => return Err(format!("line {line}: unbalanced mapping")),
            },
            Event::Scalar(text, style, _, _) => {
                if style == ScalarStyle::Plain {
                    match text.as_ref() {
                        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
                        "true" | "True" | "TRUE" => Value::Bool(true),
                        "false" | "False" | "FALSE" => Value::Bool(false),
                        _ => Value::String(text.into_owned()),
                    }
                } else {
                    Value::String(text.into_owned())
                }
            }
        };
        match stack.last_mut() {
            None => doc = Some(value),
            Some(Open::Seq(items)) => items.push(value),
            Some(Open::Map(map, key)) => match key.take() {
                None => match value {
                    Value::String(k) => {
                        if map.contains_key(&k) {
                            return Err(format!("line {line}: duplicate key `{k}`"));
                        }
                        *key = Some(k);
                    }
                    Value::Null => *key = Some(String::new()),
                    Value::Bool(b) => *key = Some(b.to_string()),
                    _ => return Err(format!("line {line}: a key must be a plain string")),
                },
                Some(k) => {
                    map.insert(k, value);
                }
            },
        }
    }
    Ok(doc.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_becomes_an_anchored_escaped_regex() {
        assert_eq!(path_regex("/api"), "^/api(/|$)");
        assert_eq!(path_regex("/v1.0/x+y/"), "^/v1\\.0/x\\+y(/|$)");
        let re = regex::Regex::new(&path_regex("/api")).expect("regex");
        assert!(re.is_match("/api") && re.is_match("/api/x"));
        assert!(!re.is_match("/apix") && !re.is_match("/x/api"));
    }

    #[test]
    fn the_yaml_reader_reads_what_render_writes() {
        let text = "a: \"x\"\nb:\n  - c: 1\n    d: ~\n";
        let v = parse_yaml(text).expect("yaml");
        assert_eq!(v["a"], "x");
        assert_eq!(v["b"][0]["c"], "1");
        assert!(v["b"][0]["d"].is_null());
        assert!(parse_yaml("a: [").is_err());
        assert!(parse_yaml("a: 1\na: 2\n").is_err());
    }
}
