//! The cloudflared config written from routes, checked against cloudflared's documented rules
//! (`specs/cloudflare/cloudflared-ingress.md`): the catch-all last and only last, hostnames
//! and paths from the routes, every service kinfra's proxy; a property-style test over
//! generated route sets that also follows cloudflared's first-match rule and checks each
//! request reaches the rule of its most specific route; and `validate` refusing each
//! documented bad shape.

use kinfra_tunnel::ingress::{CATCH_ALL_SERVICE, path_regex};
use kinfra_tunnel::{IngressConfig, IngressRule, ParsedRule, parse_rules, validate};
use std::collections::BTreeSet;
use std::path::PathBuf;

const ORIGIN: &str = "http://127.0.0.1:18080";

fn config(rules: Vec<IngressRule>) -> IngressConfig {
    IngressConfig {
        tunnel_id: "6ff42ae2-765d-4adf-8112-31c55c1551ef".into(),
        credentials_file: Some(PathBuf::from(
            "/var/lib/kinfra/cloudflared/6ff42ae2-765d-4adf-8112-31c55c1551ef.json",
        )),
        origin: ORIGIN.into(),
        metrics: Some("127.0.0.1:20241".parse().expect("addr")),
        rules,
    }
}

/// cloudflared's matching: does `rule` match a request for `host` and `path`?
fn matches(rule: &ParsedRule, host: &str, path: &str) -> bool {
    let host_ok = match rule.hostname.as_deref() {
        None | Some("*") => true,
        Some(h) => match h.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => h.eq_ignore_ascii_case(host),
        },
    };
    let path_ok = rule
        .path
        .as_deref()
        .is_none_or(|p| regex::Regex::new(p).expect("a valid regex").is_match(path));
    host_ok && path_ok
}

/// The rule a request reaches: the first that matches (cloudflared's rule).
fn first_match<'a>(rules: &'a [ParsedRule], host: &str, path: &str) -> &'a ParsedRule {
    rules
        .iter()
        .find(|r| matches(r, host, path))
        .expect("the catch-all matches everything")
}

#[test]
fn two_routes_under_one_hostname_become_a_path_rule_the_hostname_and_the_catch_all() {
    let text = config(vec![
        IngressRule::host("app.example.com"),
        IngressRule::path("app.example.com", "/api"),
    ])
    .render()
    .expect("render");
    assert_eq!(validate(&text), Vec::<String>::new(), "{text}");
    let rules = parse_rules(&text).expect("rules");
    let shape: Vec<(Option<&str>, Option<&str>, &str)> = rules
        .iter()
        .map(|r| (r.hostname.as_deref(), r.path.as_deref(), r.service.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (Some("app.example.com"), Some("^/api(/|$)"), ORIGIN),
            (Some("app.example.com"), None, ORIGIN),
            (None, None, CATCH_ALL_SERVICE),
        ],
        "{text}"
    );
    assert!(text.contains("tunnel: \"6ff42ae2-765d-4adf-8112-31c55c1551ef\""));
    assert!(text.contains(
        "credentials-file: \"/var/lib/kinfra/cloudflared/6ff42ae2-765d-4adf-8112-31c55c1551ef.json\""
    ));
    assert!(text.contains("metrics: \"127.0.0.1:20241\""));
    // kinfra routes by Host: nothing may rewrite it.
    assert!(!text.contains("httpHostHeader"), "{text}");
    assert_eq!(
        first_match(&rules, "app.example.com", "/api/users")
            .path
            .as_deref(),
        Some("^/api(/|$)")
    );
    assert_eq!(first_match(&rules, "app.example.com", "/apiary").path, None);
    assert_eq!(
        first_match(&rules, "other.example.com", "/api").service,
        CATCH_ALL_SERVICE
    );
}

#[test]
fn paths_go_most_specific_first_and_exact_hostnames_before_wildcards() {
    let text = config(vec![
        IngressRule::path("*.preview.example.com", "/static"),
        IngressRule::path("App.Example.com", "/api/"),
        IngressRule::path("app.example.com", "/api/v1"),
        IngressRule::path("app.example.com", "/"),
        IngressRule::path("app.example.com", "/api"),
        IngressRule::host("docs.example.com"),
    ])
    .render()
    .expect("render");
    assert_eq!(validate(&text), Vec::<String>::new(), "{text}");
    let rules = parse_rules(&text).expect("rules");
    let shape: Vec<(Option<&str>, Option<&str>)> = rules
        .iter()
        .map(|r| (r.hostname.as_deref(), r.path.as_deref()))
        .collect();
    assert_eq!(
        shape,
        [
            (Some("app.example.com"), Some("^/api/v1(/|$)")),
            (Some("app.example.com"), Some("^/api(/|$)")),
            (Some("app.example.com"), None),
            (Some("docs.example.com"), None),
            (Some("*.preview.example.com"), Some("^/static(/|$)")),
            (Some("*.preview.example.com"), None),
            (None, None),
        ],
        "{text}"
    );
}

#[test]
fn the_documented_example_is_valid() {
    let example = r#"tunnel: 6ff42ae2-765d-4adf-8112-31c55c1551ef
credentials-file: /root/.cloudflared/6ff42ae2-765d-4adf-8112-31c55c1551ef.json
originRequest:
  connectTimeout: 30s
ingress:
  - hostname: app.example.com
    service: http://localhost:8080
  - hostname: "*.example.com"
    path: ^/static/
    service: http://localhost:8081
  - service: http_status:404
"#;
    assert_eq!(validate(example), Vec::<String>::new());
    let catch_all_star = "ingress:\n  - hostname: a.example.com\n    service: unix:/run/x.sock\n  - hostname: \"*\"\n    service: hello_world\n";
    assert_eq!(validate(catch_all_star), Vec::<String>::new());
}

#[test]
fn validate_refuses_each_documented_bad_shape() {
    let good_last = "  - service: http_status:404\n";
    let cases: Vec<(String, &str)> = vec![
        ("tunnel: x\n".into(), "No ingress rules"),
        ("ingress: []\n".into(), "No ingress rules"),
        ("ingress: {a: 1}\n".into(), "not a list"),
        (
            "ingress:\n  - hostname: a.example.com\n    service: http://127.0.0.1:1\n".into(),
            "The last ingress rule must match all URLs",
        ),
        (
            "ingress:\n  - path: ^/x\n    service: http_status:404\n".into(),
            "The last ingress rule must match all URLs",
        ),
        (
            format!("ingress:\n  - service: http://127.0.0.1:1\n{good_last}"),
            "will match every hostname",
        ),
        (
            format!(
                "ingress:\n  - hostname: a.example.com:8443\n    service: http://127.0.0.1:1\n{good_last}"
            ),
            "Hostname cannot contain a port",
        ),
        (
            format!(
                "ingress:\n  - hostname: app.*.example.com\n    service: http://127.0.0.1:1\n{good_last}"
            ),
            "at most one wildcard",
        ),
        (
            format!(
                "ingress:\n  - hostname: \"*.*.example.com\"\n    service: http://127.0.0.1:1\n{good_last}"
            ),
            "at most one wildcard",
        ),
        (
            format!(
                "ingress:\n  - hostname: a.example.com\n    path: ^/api(\n    service: http://127.0.0.1:1\n{good_last}"
            ),
            "invalid regex",
        ),
        (
            format!(
                "ingress:\n  - hostname: a.example.com\n    service: localhost:8000\n{good_last}"
            ),
            "has a scheme and a hostname",
        ),
        (
            format!(
                "ingress:\n  - hostname: a.example.com\n    service: http://127.0.0.1:8080/app\n{good_last}"
            ),
            "different path",
        ),
        (
            format!("ingress:\n  - hostname: a.example.com\n{good_last}"),
            "has no `service`",
        ),
        (
            "ingress:\n  - service: http_status:99\n".into(),
            "from 100 to 999",
        ),
        ("ingress:\n  - service: [\n".into(), "invalid YAML"),
    ];
    for (text, expected) in cases {
        let problems = validate(&text);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "expected `{expected}` for:\n{text}\ngot {problems:?}"
        );
    }
}

#[test]
fn render_refuses_what_cloudflared_would_and_names_it() {
    let mut bad = config(vec![
        IngressRule::host("a.example.com:8443"),
        IngressRule::host("x.*.example.com"),
        IngressRule::path("b.example.com", "api"),
        IngressRule::host("*"),
    ]);
    bad.origin = "http://127.0.0.1:18080/base".into();
    bad.tunnel_id = String::new();
    let error = bad.render().expect_err("invalid");
    let text = error.to_string();
    for expected in [
        "tunnel id is empty",
        "different path",
        "cannot contain a port",
        "at most one wildcard",
        "`api` of b.example.com does not start with `/`",
        "hostname `*` would match every hostname",
    ] {
        assert!(text.contains(expected), "`{expected}` missing: {text}");
    }
    let mut no_scheme = config(vec![]);
    no_scheme.origin = "127.0.0.1:18080".into();
    assert!(no_scheme.render().is_err());
    // No hostnames at all: only the catch-all, still a valid file.
    let empty = config(vec![]).render().expect("render");
    assert_eq!(validate(&empty), Vec::<String>::new());
    assert_eq!(parse_rules(&empty).expect("rules").len(), 1);
}

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const HOSTS: &[&str] = &[
    "app.example.com",
    "api.example.com",
    "docs.example.com",
    "*.preview.example.com",
];
/// Segments with regex metacharacters among them, and what they would match unescaped
/// (`aXb`, `xxy`, `q`): escaping is part of what is checked.
const SEGMENTS: &[&str] = &[
    "api", "v1", "v2", "static", "a.b", "aXb", "x+y", "xxy", "(q)", "q", "users", "$",
];

fn random_path(g: &mut Gen, max: usize) -> String {
    let n = g.below(max + 1);
    let mut path = String::new();
    for _ in 0..n {
        path.push('/');
        path.push_str(g.pick(SEGMENTS));
    }
    if path.is_empty() { "/".into() } else { path }
}

/// The route prefix a request for `path` belongs to: the longest whose segments it starts with.
fn most_specific<'a>(prefixes: &'a BTreeSet<String>, path: &str) -> Option<&'a String> {
    prefixes
        .iter()
        .filter(|p| path == p.as_str() || path.starts_with(&format!("{p}/")))
        .max_by_key(|p| p.len())
}

#[test]
fn generated_route_sets_give_valid_configs_where_each_request_reaches_its_most_specific_route() {
    for seed in 1..=300u64 {
        let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut routes = Vec::new();
        for _ in 0..1 + g.below(8) {
            let host = g.pick(HOSTS);
            routes.push(if g.below(4) == 0 {
                IngressRule::host(host)
            } else {
                IngressRule::path(host, random_path(&mut g, 3))
            });
        }
        let port = 1024 + g.below(60000);
        let mut cfg = config(routes.clone());
        cfg.origin = format!("http://127.0.0.1:{port}");
        let text = cfg.render().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(
            validate(&text),
            Vec::<String>::new(),
            "seed {seed}:\n{text}"
        );
        let rules = parse_rules(&text).expect("rules");
        let (last, rest) = rules.split_last().expect("rules");
        assert_eq!(
            (
                last.hostname.as_deref(),
                last.path.as_deref(),
                last.service.as_str()
            ),
            (None, None, CATCH_ALL_SERVICE),
            "seed {seed}: the catch-all is not last"
        );
        assert!(
            rest.iter()
                .all(|r| r.service == cfg.origin && r.hostname.is_some()),
            "seed {seed}: a rule does not point at kinfra's proxy:\n{text}"
        );
        // Hostnames and paths come from the routes, and nothing else.
        let hosts: BTreeSet<&str> = routes.iter().map(|r| r.hostname.as_str()).collect();
        let ruled: BTreeSet<&str> = rest.iter().filter_map(|r| r.hostname.as_deref()).collect();
        assert_eq!(hosts, ruled, "seed {seed}");
        let mut prefixes: std::collections::BTreeMap<&str, BTreeSet<String>> = Default::default();
        for r in &routes {
            let entry = prefixes.entry(r.hostname.as_str()).or_default();
            if let Some(p) = &r.path_prefix {
                let p = p.trim_end_matches('/');
                if !p.is_empty() {
                    entry.insert(p.to_owned());
                }
            }
        }
        for (host, ps) in &prefixes {
            let paths: BTreeSet<String> = rest
                .iter()
                .filter(|r| r.hostname.as_deref() == Some(host))
                .filter_map(|r| r.path.clone())
                .collect();
            let expected: BTreeSet<String> = ps.iter().map(|p| path_regex(p)).collect();
            assert_eq!(paths, expected, "seed {seed}: paths of {host}");
        }
        // cloudflared's first match lands on the most specific route of the request's host.
        for _ in 0..40 {
            let host_pattern = g.pick(HOSTS);
            let host = match host_pattern.strip_prefix("*.") {
                Some(suffix) => format!("pr-{}.{suffix}", g.below(9)),
                None => host_pattern.to_owned(),
            };
            let path = random_path(&mut g, 4);
            let rule = first_match(rules.as_slice(), &host, &path);
            match prefixes.get(host_pattern) {
                None => assert_eq!(
                    rule.service, CATCH_ALL_SERVICE,
                    "seed {seed}: {host}{path} has no route but reached {rule:?}"
                ),
                Some(ps) => {
                    assert_eq!(
                        rule.hostname.as_deref(),
                        Some(host_pattern),
                        "seed {seed}: {host}{path}"
                    );
                    let want = most_specific(ps, &path).map(|p| path_regex(p));
                    assert_eq!(rule.path, want, "seed {seed}: {host}{path}\n{text}");
                }
            }
        }
    }
}
