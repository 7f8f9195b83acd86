//! Who may read and who may act: the Host allow-list (DNS rebinding), the token (bearer or
//! session cookie) and the same-origin check for state-changing requests.

use axum::http::{HeaderMap, StatusCode, header};
use kinfra_core::Secret;
use subtle::ConstantTimeEq;

/// Name of the session cookie set by the login form.
pub const SESSION_COOKIE: &str = "kinfra_session";

/// The access rules of one dashboard listener.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    token: Secret,
    allowed_hosts: Vec<String>,
    /// Reads need no token (the listener is on loopback).
    open_reads: bool,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The Host header is not one this dashboard answers to.
    UnknownHost(String),
    /// No token, or a wrong one.
    Unauthenticated,
    /// The request came from another origin.
    ForeignOrigin(String),
}

impl Denied {
    /// The HTTP status for the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Denied::UnknownHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Denied::Unauthenticated => StatusCode::UNAUTHORIZED,
            Denied::ForeignOrigin(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The message for the client.
    pub fn message(&self) -> String {
        match self {
            Denied::UnknownHost(host) => format!(
                "host `{host}` is not allowed; add it to dashboard.allowed_hosts to serve it"
            ),
            Denied::Unauthenticated => {
                "a dashboard token is required (Authorization: Bearer <token>, or log in at /kinfra/login)".into()
            }
            Denied::ForeignOrigin(origin) => {
                format!("requests from origin `{origin}` are not accepted")
            }
        }
    }
}

/// The host part of a `Host` header value (`[::1]:9000` → `[::1]`, `a.b:80` → `a.b`).
fn host_name(value: &str) -> &str {
    if value.starts_with('[') {
        return value
            .split_once(']')
            .map_or(value, |(h, _)| &value[..h.len() + 1]);
    }
    value.rsplit_once(':').map_or(value, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            value
        }
    })
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl AccessPolicy {
    /// Rules with this token and these extra host names; `open_reads` when the listener is
    /// only reachable from this machine.
    pub fn new(token: Secret, allowed_hosts: Vec<String>, open_reads: bool) -> Self {
        Self {
            token,
            allowed_hosts: allowed_hosts
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            open_reads,
        }
    }

    /// The Host header must name this machine or an allowed host: a page on a foreign name
    /// that resolves to us (DNS rebinding) gets nothing.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let Some(value) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            return Err(Denied::UnknownHost(String::new()));
        };
        let host = host_name(value.trim());
        if is_loopback_name(host)
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(host))
        {
            Ok(())
        } else {
            Err(Denied::UnknownHost(host.to_owned()))
        }
    }

    fn token_matches(&self, candidate: &str) -> bool {
        let expected = self.token.expose().as_bytes();
        !expected.is_empty() && bool::from(candidate.as_bytes().ct_eq(expected))
    }

    fn bearer(headers: &HeaderMap) -> Option<&str> {
        headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(str::trim)
    }

    fn cookie(headers: &HeaderMap) -> Option<&str> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == SESSION_COOKIE)
            .map(|(_, value)| value)
    }

    /// How the request proves itself, if it does.
    fn authenticated(&self, headers: &HeaderMap) -> Option<Via> {
        if Self::bearer(headers).is_some_and(|t| self.token_matches(t)) {
            return Some(Via::Bearer);
        }
        if Self::cookie(headers).is_some_and(|t| self.token_matches(t)) {
            return Some(Via::Cookie);
        }
        None
    }

    /// True when the request carries a valid token.
    pub fn is_authenticated(&self, headers: &HeaderMap) -> bool {
        self.authenticated(headers).is_some()
    }

    /// Reads are open on loopback; elsewhere they need the token.
    pub fn check_read(&self, headers: &HeaderMap) -> Result<(), Denied> {
        if self.open_reads || self.is_authenticated(headers) {
            Ok(())
        } else {
            Err(Denied::Unauthenticated)
        }
    }

    /// A state-changing request needs the token and must not come from another origin. A
    /// cookie only counts together with an `Origin` header that matches the `Host` (browsers
    /// always send one on POST), so a foreign page cannot ride on the session.
    pub fn check_write(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let via = self.authenticated(headers).ok_or(Denied::Unauthenticated)?;
        self.check_same_origin(headers, via == Via::Cookie)
    }

    /// The `Origin` (when present, or when `required`) must be this dashboard's own.
    pub fn check_same_origin(&self, headers: &HeaderMap, required: bool) -> Result<(), Denied> {
        if headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|site| site == "cross-site")
        {
            return Err(Denied::ForeignOrigin("cross-site".into()));
        }
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        match (origin, host) {
            (None, _) if !required => Ok(()),
            (Some(origin), Some(host)) => {
                let authority = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .unwrap_or("");
                if !authority.is_empty() && authority.eq_ignore_ascii_case(host) {
                    Ok(())
                } else {
                    Err(Denied::ForeignOrigin(origin.to_owned()))
                }
            }
            (origin, _) => Err(Denied::ForeignOrigin(origin.unwrap_or("(none)").to_owned())),
        }
    }

    /// True when `candidate` is the token (for the login form).
    pub fn accepts_token(&self, candidate: &str) -> bool {
        self.token_matches(candidate.trim())
    }

    /// The cookie that keeps a browser logged in.
    pub fn session_cookie(&self) -> String {
        format!(
            "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            self.token.expose()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Bearer,
    Cookie,
}

/// Generates a token: 32 random bytes from the OS, hex-encoded.
pub fn generate_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    fn policy() -> AccessPolicy {
        AccessPolicy::new(
            Secret::new("s3cret-token"),
            vec!["ops.example.com".into()],
            true,
        )
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(host_name("[::1]:9000"), "[::1]");
        assert_eq!(host_name("localhost"), "localhost");
        let p = policy();
        for ok in [
            "127.0.0.1:9000",
            "localhost:1",
            "[::1]:2",
            "ops.example.com",
            "app.localhost",
        ] {
            assert!(p.check_host(&headers(&[("host", ok)])).is_ok(), "{ok}");
        }
        for bad in ["evil.example", "127.0.0.1.evil.example:9000", "10.0.0.1"] {
            assert!(p.check_host(&headers(&[("host", bad)])).is_err(), "{bad}");
        }
        assert!(p.check_host(&HeaderMap::new()).is_err());
    }

    #[test]
    fn writes_need_token_and_same_origin() {
        let p = policy();
        let host = ("host", "127.0.0.1:9000");
        assert_eq!(
            p.check_write(&headers(&[host])),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            p.check_write(&headers(&[host, ("authorization", "Bearer wrong")])),
            Err(Denied::Unauthenticated)
        );
        assert!(
            p.check_write(&headers(&[host, ("authorization", "Bearer s3cret-token")]))
                .is_ok()
        );
        // Bearer with a foreign Origin is refused.
        assert!(matches!(
            p.check_write(&headers(&[
                host,
                ("authorization", "Bearer s3cret-token"),
                ("origin", "http://evil.example")
            ])),
            Err(Denied::ForeignOrigin(_))
        ));
        // A cookie needs a matching Origin.
        let cookie = ("cookie", "a=b; kinfra_session=s3cret-token");
        assert!(matches!(
            p.check_write(&headers(&[host, cookie])),
            Err(Denied::ForeignOrigin(_))
        ));
        assert!(
            p.check_write(&headers(&[
                host,
                cookie,
                ("origin", "http://127.0.0.1:9000")
            ]))
            .is_ok()
        );
        assert!(matches!(
            p.check_write(&headers(&[
                host,
                cookie,
                ("origin", "http://127.0.0.1:9000"),
                ("sec-fetch-site", "cross-site")
            ])),
            Err(Denied::ForeignOrigin(_))
        ));
    }

    #[test]
    fn closed_reads_need_token() {
        let p = AccessPolicy::new(Secret::new("tok-1234"), vec![], false);
        assert!(p.check_read(&HeaderMap::new()).is_err());
        assert!(
            p.check_read(&headers(&[("authorization", "Bearer tok-1234")]))
                .is_ok()
        );
        assert!(policy().check_read(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn empty_token_never_matches() {
        let p = AccessPolicy::new(Secret::new(""), vec![], true);
        assert!(!p.accepts_token(""));
        assert!(
            p.check_write(&headers(&[("authorization", "Bearer ")]))
                .is_err()
        );
    }

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let a = generate_token().expect("token");
        let b = generate_token().expect("token");
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
