//! The static route table built from `[[routes]]`: host before path, longest prefix wins, and the
//! reserved dashboard paths in front of everything.

use crate::error::ProxyError;
use crate::upstream::{Backend, Pool};
use kinfra_core::config::RouteConfig;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// Where a matched route sends its requests.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A supervised service or resource, by name; its port comes from the runtime's status.
    Service(Arc<str>),
    /// Fixed upstream URL(s), load-balanced round-robin.
    Fixed(Arc<Pool>),
}

/// One route, as matched against a request.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// The path prefix, as configured (always starts with `/`).
    pub prefix: String,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    /// Where requests go.
    pub target: Target,
}

/// The routes of one kind of host (exact, wildcard or any), longest prefix first.
#[derive(Debug, Default, Clone)]
struct RouteList(Vec<Route>);

impl RouteList {
    fn push(&mut self, route: Route) {
        self.0.push(route);
    }

    /// Longest prefix first; file order breaks ties (the sort is stable).
    fn sort(&mut self) {
        self.0.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    }

    fn find(&self, path: &str) -> Option<&Route> {
        self.0.iter().find(|r| prefix_matches(&r.prefix, path))
    }
}

/// All configured routes, immutable once built.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    exact: HashMap<String, RouteList>,
    /// `(".example.com", routes)` for `*.example.com`, longest suffix first.
    wildcard: Vec<(String, RouteList)>,
    any: RouteList,
    reserved: Vec<String>,
}

impl RouteTable {
    /// Builds the table; fixed upstream URLs are parsed (and host names resolved) here, once.
    pub(crate) fn build(
        routes: &[RouteConfig],
        reserved: &[String],
        max_fails_window: std::time::Duration,
    ) -> Result<Self, ProxyError> {
        let mut table = RouteTable {
            reserved: reserved.to_vec(),
            ..RouteTable::default()
        };
        let mut wildcard: HashMap<String, RouteList> = HashMap::new();
        for (index, rc) in routes.iter().enumerate() {
            let target = match (&rc.service, &rc.upstream) {
                (Some(service), _) => Target::Service(Arc::from(service.as_str())),
                (None, Some(urls)) => {
                    let mut backends = Vec::with_capacity(urls.0.len());
                    for url in &urls.0 {
                        backends.push(Arc::new(parse_upstream(url).map_err(|reason| {
                            ProxyError::InvalidRoute {
                                index,
                                reason: format!("upstream `{url}`: {reason}"),
                            }
                        })?));
                    }
                    if backends.is_empty() {
                        return Err(ProxyError::InvalidRoute {
                            index,
                            reason: "the upstream list is empty".into(),
                        });
                    }
                    Target::Fixed(Arc::new(Pool::new(backends, max_fails_window)))
                }
                (None, None) => {
                    return Err(ProxyError::InvalidRoute {
                        index,
                        reason: "a route needs a `service` or an `upstream`".into(),
                    });
                }
            };
            if !rc.path.starts_with('/') {
                return Err(ProxyError::InvalidRoute {
                    index,
                    reason: format!("route path `{}` must start with `/`", rc.path),
                });
            }
            let route = Route {
                prefix: rc.path.clone(),
                strip_prefix: rc.strip_prefix,
                target,
            };
            match rc.host.as_deref().map(|h| normalize_host(h).into_owned()) {
                None => table.any.push(route),
                Some(host) if host.is_empty() || host == "*" => table.any.push(route),
                Some(host) => {
                    if let Some(suffix) = host.strip_prefix('*') {
                        wildcard.entry(suffix.to_owned()).or_default().push(route);
                    } else {
                        table.exact.entry(host).or_default().push(route);
                    }
                }
            }
        }
        table.any.sort();
        for list in table.exact.values_mut() {
            list.sort();
        }
        let mut wildcard: Vec<(String, RouteList)> = wildcard.into_iter().collect();
        for (_, list) in &mut wildcard {
            list.sort();
        }
        wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        table.wildcard = wildcard;
        Ok(table)
    }

    /// True when `path` belongs to the dashboard.
    pub(crate) fn is_reserved(&self, path: &str) -> bool {
        self.reserved.iter().any(|p| prefix_matches(p, path))
    }

    /// The route for a request: routes for its exact host, then for a wildcard host, then
    /// routes for any host; within each, the longest matching prefix.
    pub(crate) fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        if let Some(host) = host {
            if let Some(route) = self.exact.get(host).and_then(|l| l.find(path)) {
                return Some(route);
            }
            for (suffix, list) in &self.wildcard {
                if host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && let Some(route) = list.find(path)
                {
                    return Some(route);
                }
            }
        }
        self.any.find(path)
    }

    /// Every host named by a route, for certificates (wildcards included as `*.example.com`).
    pub(crate) fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.exact.keys().cloned().collect();
        hosts.extend(self.wildcard.iter().map(|(s, _)| format!("*{s}")));
        hosts.sort();
        hosts
    }
}

/// Lower-cases a host and removes a port (`Example.com:8080` → `example.com`, `[::1]:80` →
/// `[::1]`). Borrows when the host is already in that form (the usual case on the request
/// path).
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        }
    };
    let host = without_port.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Prefix match on path-segment boundaries: `/api` matches `/api`, `/api/` and `/api/x`, not
/// `/apix`. A prefix ending in `/` matches everything below it.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

/// The path sent upstream when the prefix is stripped: `/api/users` → `/users`, `/api` → `/`.
pub(crate) fn strip_path_prefix<'a>(prefix: &str, path: &'a str) -> std::borrow::Cow<'a, str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.get(prefix.len()..).unwrap_or("");
    if rest.is_empty() {
        std::borrow::Cow::Borrowed("/")
    } else if rest.starts_with('/') {
        std::borrow::Cow::Borrowed(rest)
    } else {
        std::borrow::Cow::Owned(format!("/{rest}"))
    }
}

/// Parses `http://host:port`, `https://host:port` or `host:port` into a backend; host names are
/// resolved now.
pub(crate) fn parse_upstream(url: &str) -> Result<Backend, String> {
    let url = url.trim();
    let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if url.contains("://") {
        return Err("only http:// and https:// upstreams are supported".into());
    } else {
        (false, url)
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.contains('?') {
        return Err("an upstream URL must not have a path".into());
    }
    if authority.contains('@') {
        return Err("an upstream URL must not have user info".into());
    }
    let host = normalize_host(authority);
    let has_port = if authority.starts_with('[') {
        authority.contains("]:")
    } else {
        authority.matches(':').count() == 1
    };
    let with_port = if has_port {
        authority.to_owned()
    } else if tls {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    };
    let addr: SocketAddr = match with_port.parse() {
        Ok(addr) => addr,
        Err(_) => with_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve: {e}"))?
            .next()
            .ok_or_else(|| "the name resolves to no address".to_owned())?,
    };
    let sni = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(Backend::new(addr, tls, sni))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kinfra_core::config::OneOrMany;
    use std::time::Duration;

    fn route(host: Option<&str>, path: &str, service: &str) -> RouteConfig {
        RouteConfig {
            host: host.map(str::to_owned),
            path: path.into(),
            strip_prefix: false,
            service: Some(service.into()),
            upstream: None,
        }
    }

    fn target_name(route: Option<&Route>) -> Option<String> {
        match route.map(|r| &r.target) {
            Some(Target::Service(s)) => Some(s.to_string()),
            Some(Target::Fixed(_)) => Some("fixed".into()),
            None => None,
        }
    }

    #[test]
    fn longest_prefix_wins_and_host_comes_first() {
        let table = RouteTable::build(
            &[
                route(None, "/", "root"),
                route(None, "/api", "api"),
                route(None, "/api/v2", "api2"),
                route(Some("app.example.com"), "/", "app"),
                route(Some("*.example.com"), "/", "wild"),
                route(Some("deep.sub.example.com"), "/x", "deepx"),
                route(Some("*.sub.example.com"), "/", "subwild"),
            ],
            &[],
            Duration::from_secs(1),
        )
        .unwrap();
        let find = |host: Option<&str>, path: &str| target_name(table.find(host, path));
        assert_eq!(find(None, "/"), Some("root".into()));
        assert_eq!(find(None, "/api"), Some("api".into()));
        assert_eq!(find(None, "/api/"), Some("api".into()));
        assert_eq!(find(None, "/apix"), Some("root".into()));
        assert_eq!(find(None, "/api/v2/x"), Some("api2".into()));
        assert_eq!(find(None, "/api/v21"), Some("api".into()));
        // host before path: the host's `/` beats the any-host `/api`
        assert_eq!(find(Some("app.example.com"), "/api"), Some("app".into()));
        assert_eq!(find(Some("other.example.com"), "/api"), Some("wild".into()));
        assert_eq!(find(Some("example.com"), "/api"), Some("api".into()));
        assert_eq!(find(Some("unknown.test"), "/api"), Some("api".into()));
        // the longest wildcard suffix first; an exact host with no matching path falls through
        assert_eq!(
            find(Some("deep.sub.example.com"), "/y"),
            Some("subwild".into())
        );
        assert_eq!(
            find(Some("deep.sub.example.com"), "/x/1"),
            Some("deepx".into())
        );
    }

    #[test]
    fn no_route_without_a_catch_all() {
        let table =
            RouteTable::build(&[route(None, "/api", "api")], &[], Duration::from_secs(1)).unwrap();
        assert!(table.find(None, "/").is_none());
        assert!(table.find(Some("x"), "/ap").is_none());
    }

    #[test]
    fn reserved_paths() {
        let reserved: Vec<String> = kinfra_core::config::DEFAULT_RESERVED_PATHS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let table = RouteTable::build(&[], &reserved, Duration::from_secs(1)).unwrap();
        for p in [
            "/kinfra",
            "/kinfra/",
            "/kinfra/app.js",
            "/__status__",
            "/__events__",
            "/__action__/restart/api",
            "/__commands__/db",
            "/__logs__/api",
            "/__fleet__",
            "/__fleet__/events",
            "/metrics",
            "/healthz",
        ] {
            assert!(table.is_reserved(p), "{p}");
        }
        for p in [
            "/",
            "/kinfrax",
            "/__action__",
            "/metricsx",
            "/api/metrics",
            "/__fleet__x",
        ] {
            assert!(!table.is_reserved(p), "{p}");
        }
    }

    #[test]
    fn strip_prefix_paths() {
        assert_eq!(strip_path_prefix("/api", "/api"), "/");
        assert_eq!(strip_path_prefix("/api", "/api/"), "/");
        assert_eq!(strip_path_prefix("/api", "/api/users"), "/users");
        assert_eq!(strip_path_prefix("/api/", "/api/users"), "/users");
        assert_eq!(strip_path_prefix("/", "/users"), "/users");
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:9000"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("localhost"), "localhost");
    }

    #[test]
    fn upstream_urls() {
        let b = parse_upstream("http://127.0.0.1:8080").unwrap();
        assert_eq!(b.addr, "127.0.0.1:8080".parse().unwrap());
        assert!(!b.tls);
        let b = parse_upstream("127.0.0.1:81/").unwrap();
        assert_eq!(b.addr.port(), 81);
        let b = parse_upstream("https://127.0.0.1").unwrap();
        assert_eq!(b.addr.port(), 443);
        assert!(b.tls);
        let b = parse_upstream("http://localhost:8081").unwrap();
        assert_eq!(b.addr.port(), 8081);
        assert_eq!(b.sni, "localhost");
        let b = parse_upstream("http://[::1]:8082").unwrap();
        assert_eq!(b.addr, "[::1]:8082".parse().unwrap());
        assert!(parse_upstream("http://127.0.0.1:8080/path").is_err());
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://u:p@127.0.0.1:1").is_err());
    }

    #[test]
    fn fixed_upstream_lists() {
        let rc = RouteConfig {
            host: None,
            path: "/".into(),
            strip_prefix: true,
            service: None,
            upstream: Some(OneOrMany(vec![
                "http://127.0.0.1:1".into(),
                "http://127.0.0.1:2".into(),
            ])),
        };
        let table = RouteTable::build(&[rc], &[], Duration::from_secs(1)).unwrap();
        let Some(Route {
            target: Target::Fixed(pool),
            strip_prefix: true,
            ..
        }) = table.find(None, "/x")
        else {
            panic!("expected a fixed route");
        };
        assert_eq!(pool.len(), 2);
    }
}
