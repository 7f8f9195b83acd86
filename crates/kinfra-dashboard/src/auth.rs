//! Who may read and who may act: the Host allow-list (DNS rebinding), the client's address
//! (only loopback clients read without a token), the token (bearer) or a server-side session
//! (cookie), and the same-origin check for state-changing requests.
//!
//! A session is a random id from the OS (256 bits) kept in this process's memory with a fixed
//! lifetime from login ([`DEFAULT_SESSION_LIFETIME`], not extended by use). Logging out
//! revokes it; stopping the runtime revokes all of them (they live nowhere else). The cookie
//! never holds the token, and is scoped to the dashboard's own paths ([`COOKIE_PATHS`]) so the
//! services behind the proxy never receive it.

use axum::http::{HeaderMap, StatusCode, header};
use kinfra_core::Secret;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Name of the session cookie set by the login form.
pub const SESSION_COOKIE: &str = "kinfra_session";

/// The header in which the proxy names the client it forwards for (it removes any copy the
/// client sent). Believed only from a peer on this machine.
pub const CLIENT_HEADER: &str = "x-kinfra-client";

/// The paths the session cookie is set for, one cookie each: every dashboard route that reads
/// or acts with a session. Nothing else on the same origin (the proxied services) gets it.
pub const COOKIE_PATHS: [&str; 6] = [
    "/kinfra",
    "/__status__",
    "/__events__",
    "/__action__",
    "/__logs__",
    "/metrics",
];

/// How long a session lasts from login (fixed: use does not extend it).
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept at once; the oldest goes when a login would exceed it.
const MAX_SESSIONS: usize = 1024;

/// The two ends of a connection: who connected (`peer`) and the address of ours they
/// reached (`local`). A peer whose address is the local one is this machine (the proxy
/// reaching a dashboard that listens on a non-loopback address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionEnds {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Our end.
    pub local: SocketAddr,
}

impl ConnectionEnds {
    /// The peer is a process on this machine: a loopback address, or our own address.
    pub fn peer_is_this_machine(&self) -> bool {
        let peer = self.peer.ip().to_canonical();
        peer.is_loopback() || peer == self.local.ip().to_canonical()
    }
}

/// Who sent a request, as far as the dashboard can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the TCP peer or, from a peer on this machine (the proxy), the
    /// address in [`CLIENT_HEADER`]. `None` when unknown or unparsable.
    pub ip: Option<IpAddr>,
    /// On this machine: a peer on this machine asking for itself, or one naming a loopback
    /// client.
    pub local: bool,
    /// The request reached the proxy over HTTPS (`X-Forwarded-Proto: https` from a peer on
    /// this machine).
    pub https: bool,
}

impl Client {
    /// The client of a request that came over `ends` with `headers`. No known connection (a
    /// router used without the server) is an unknown, hence remote, client.
    pub fn of(ends: Option<ConnectionEnds>, headers: &HeaderMap) -> Client {
        let Some(ends) = ends else {
            return Client {
                ip: None,
                local: false,
                https: false,
            };
        };
        let peer_ip = ends.peer.ip().to_canonical();
        if !ends.peer_is_this_machine() {
            return Client {
                ip: Some(peer_ip),
                local: false,
                https: false,
            };
        }
        let https = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
        let mut named = headers.get_all(CLIENT_HEADER).iter();
        let (ip, local) = match (named.next(), named.next()) {
            // A process on this machine asking for itself.
            (None, _) => (Some(peer_ip), true),
            // The proxy naming its client: local only when that is a loopback address.
            (Some(value), None) => {
                let ip = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<IpAddr>().ok())
                    .map(|ip| ip.to_canonical());
                (ip, ip.is_some_and(|ip| ip.is_loopback()))
            }
            // Two values: nothing to believe.
            (Some(_), Some(_)) => (None, false),
        };
        Client { ip, local, https }
    }

    /// A client on this machine (reads need no token).
    pub fn is_local(&self) -> bool {
        self.local
    }
}

/// The live sessions of one dashboard.
struct Sessions {
    lifetime: Duration,
    /// Session id → when it expires.
    ids: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("lifetime", &self.lifetime)
            .field("live", &self.lock().len())
            .finish()
    }
}

/// The access rules of one dashboard listener.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    token: Secret,
    /// Shared by every clone: a reload that adds route hosts changes it for the server.
    allowed_hosts: Arc<std::sync::RwLock<Vec<String>>>,
    sessions: Arc<Sessions>,
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
    /// Rules with this token and these extra host names; sessions last
    /// [`DEFAULT_SESSION_LIFETIME`].
    pub fn new(token: Secret, allowed_hosts: Vec<String>) -> Self {
        Self {
            token,
            allowed_hosts: Arc::new(std::sync::RwLock::new(lowercase(allowed_hosts))),
            sessions: Arc::new(Sessions {
                lifetime: DEFAULT_SESSION_LIFETIME,
                ids: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Replaces the extra host names (a reload changed the routes' hosts), for this policy and
    /// every clone of it, the running server's included.
    pub fn set_allowed_hosts(&self, hosts: Vec<String>) {
        let hosts = lowercase(hosts);
        match self.allowed_hosts.write() {
            Ok(mut h) => *h = hosts,
            Err(poisoned) => *poisoned.into_inner() = hosts,
        }
    }

    /// The same rules with sessions lasting `lifetime` (tests use a short one).
    pub fn with_session_lifetime(self, lifetime: Duration) -> Self {
        Self {
            sessions: Arc::new(Sessions {
                lifetime,
                ids: Mutex::new(HashMap::new()),
            }),
            ..self
        }
    }

    /// The Host header must name this machine or an allowed host: a page on a foreign name
    /// that resolves to us (DNS rebinding) gets nothing.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let Some(value) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            return Err(Denied::UnknownHost(String::new()));
        };
        let host = host_name(value.trim());
        let allowed = match self.allowed_hosts.read() {
            Ok(h) => h.iter().any(|a| a.eq_ignore_ascii_case(host)),
            Err(poisoned) => poisoned
                .into_inner()
                .iter()
                .any(|a| a.eq_ignore_ascii_case(host)),
        };
        if is_loopback_name(host) || allowed {
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

    /// Every value of the session cookie in the request (a browser may send more than one).
    fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == SESSION_COOKIE)
            .map(|(_, value)| value.trim())
    }

    fn session_valid(&self, id: &str) -> bool {
        let mut ids = self.sessions.lock();
        match ids.get(id) {
            Some(expires) if *expires > Instant::now() => true,
            Some(_) => {
                ids.remove(id);
                false
            }
            None => false,
        }
    }

    /// How the request proves itself, if it does.
    fn authenticated(&self, headers: &HeaderMap) -> Option<Via> {
        if Self::bearer(headers).is_some_and(|t| self.token_matches(t)) {
            return Some(Via::Bearer);
        }
        if Self::cookies(headers).any(|id| self.session_valid(id)) {
            return Some(Via::Session);
        }
        None
    }

    /// True when the request carries the token or a live session.
    pub fn is_authenticated(&self, headers: &HeaderMap) -> bool {
        self.authenticated(headers).is_some()
    }

    /// Reads are open to clients on this machine; others need the token or a session.
    pub fn check_read(&self, headers: &HeaderMap, client: &Client) -> Result<(), Denied> {
        if client.is_local() || self.is_authenticated(headers) {
            Ok(())
        } else {
            Err(Denied::Unauthenticated)
        }
    }

    /// A state-changing request needs the token and must not come from another origin. A
    /// session only counts together with an `Origin` header that matches the `Host`
    /// (browsers always send one on POST), so a foreign page cannot ride on it.
    pub fn check_write(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let via = self.authenticated(headers).ok_or(Denied::Unauthenticated)?;
        self.check_same_origin(headers, via == Via::Session)
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

    /// Starts a session (after the token was checked) and returns its id: 32 random bytes
    /// from the OS, hex-encoded. Expired sessions are dropped first; beyond
    /// [`MAX_SESSIONS`] the oldest goes.
    pub fn open_session(&self) -> std::io::Result<String> {
        let id = generate_token()?;
        let now = Instant::now();
        let mut ids = self.sessions.lock();
        ids.retain(|_, expires| *expires > now);
        while ids.len() >= MAX_SESSIONS {
            let oldest = ids
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(oldest) => ids.remove(&oldest),
                None => break,
            };
        }
        ids.insert(id.clone(), now + self.sessions.lifetime);
        Ok(id)
    }

    /// Ends the sessions the request carries; true when one was live.
    pub fn close_sessions(&self, headers: &HeaderMap) -> bool {
        let mut ids = self.sessions.lock();
        let mut closed = false;
        for id in Self::cookies(headers) {
            closed |= ids.remove(id).is_some();
        }
        closed
    }

    /// Number of live (unexpired) sessions.
    pub fn live_sessions(&self) -> usize {
        let now = Instant::now();
        self.sessions
            .lock()
            .values()
            .filter(|expires| **expires > now)
            .count()
    }

    /// The `Set-Cookie` values that keep a browser logged in with session `id`: one per
    /// dashboard path, HttpOnly, SameSite=Strict, `Secure` when the client came over HTTPS,
    /// expiring with the session.
    pub fn session_cookies(&self, id: &str, secure: bool) -> Vec<String> {
        let max_age = self.sessions.lifetime.as_secs();
        let secure = if secure { "; Secure" } else { "" };
        COOKIE_PATHS
            .iter()
            .map(|path| {
                format!(
                    "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path={path}; Max-Age={max_age}{secure}"
                )
            })
            .collect()
    }

    /// The `Set-Cookie` values that remove the session cookies.
    pub fn clearing_cookies(&self, secure: bool) -> Vec<String> {
        let secure = if secure { "; Secure" } else { "" };
        COOKIE_PATHS
            .iter()
            .map(|path| {
                format!(
                    "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path={path}; Max-Age=0{secure}"
                )
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Bearer,
    Session,
}

fn lowercase(hosts: Vec<String>) -> Vec<String> {
    hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect()
}

/// Generates a token: 32 random bytes from the OS, hex-encoded.
pub fn generate_token() -> std::io::Result<String> {
    kinfra_core::random::hex(32)
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
        AccessPolicy::new(Secret::new("s3cret-token"), vec!["ops.example.com".into()])
    }

    /// A connection from `addr` to our 127.0.0.1:9000.
    fn peer(addr: &str) -> Option<ConnectionEnds> {
        Some(ConnectionEnds {
            peer: addr.parse().expect("socket address"),
            local: "127.0.0.1:9000".parse().expect("socket address"),
        })
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
    fn writes_need_token_or_session_and_same_origin() {
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
        // The token is not a session.
        assert_eq!(
            p.check_write(&headers(&[
                host,
                ("cookie", "kinfra_session=s3cret-token"),
                ("origin", "http://127.0.0.1:9000")
            ])),
            Err(Denied::Unauthenticated)
        );
        // A session needs a matching Origin.
        let id = p.open_session().expect("session");
        let cookie = format!("a=b; kinfra_session={id}");
        let cookie = ("cookie", cookie.as_str());
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
        // Logged out: gone.
        assert!(p.close_sessions(&headers(&[cookie])));
        assert_eq!(
            p.check_write(&headers(&[
                host,
                cookie,
                ("origin", "http://127.0.0.1:9000")
            ])),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn sessions_expire() {
        let p = policy().with_session_lifetime(Duration::from_millis(1));
        let id = p.open_session().expect("session");
        std::thread::sleep(Duration::from_millis(20));
        let cookie = format!("kinfra_session={id}");
        assert!(!p.is_authenticated(&headers(&[("cookie", &cookie)])));
        assert_eq!(p.live_sessions(), 0);
    }

    #[test]
    fn session_cookies_are_scoped_and_never_the_token() {
        let p = policy();
        let id = p.open_session().expect("session");
        assert_ne!(id, "s3cret-token");
        assert!(id.len() >= 32);
        let cookies = p.session_cookies(&id, false);
        assert_eq!(cookies.len(), COOKIE_PATHS.len());
        for (cookie, path) in cookies.iter().zip(COOKIE_PATHS) {
            assert!(
                cookie.contains(&format!("; Path={path};")) && !cookie.contains("Path=/;"),
                "{cookie}"
            );
            assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
            assert!(!cookie.contains("Secure") && !cookie.contains("s3cret-token"));
        }
        assert!(p.session_cookies(&id, true)[0].ends_with("; Secure"));
    }

    #[test]
    fn reads_are_open_to_local_clients_only() {
        let p = policy();
        let none = HeaderMap::new();
        let bearer = headers(&[("authorization", "Bearer s3cret-token")]);
        let local = Client::of(peer("127.0.0.1:5000"), &none);
        assert!(p.check_read(&none, &local).is_ok());
        let remote = Client::of(peer("10.1.2.3:5000"), &none);
        assert_eq!(p.check_read(&none, &remote), Err(Denied::Unauthenticated));
        assert!(p.check_read(&bearer, &remote).is_ok());
        // No peer at all: unknown, so remote.
        assert!(!Client::of(None, &none).is_local());
        // The proxy (a loopback peer) names the client.
        let forwarded = headers(&[("x-kinfra-client", "203.0.113.9")]);
        assert!(!Client::of(peer("127.0.0.1:5000"), &forwarded).is_local());
        let forwarded_local = headers(&[("x-kinfra-client", "::1")]);
        assert!(Client::of(peer("[::1]:5000"), &forwarded_local).is_local());
        // Unparsable or repeated: not local.
        let junk = headers(&[("x-kinfra-client", "localhost")]);
        assert!(!Client::of(peer("127.0.0.1:5000"), &junk).is_local());
        let twice = headers(&[
            ("x-kinfra-client", "127.0.0.1"),
            ("x-kinfra-client", "127.0.0.1"),
        ]);
        assert!(!Client::of(peer("127.0.0.1:5000"), &twice).is_local());
        // A remote peer cannot claim to be local.
        let claim = headers(&[("x-kinfra-client", "127.0.0.1")]);
        assert!(!Client::of(peer("10.1.2.3:5000"), &claim).is_local());
        // A v4-mapped loopback peer is local.
        assert!(Client::of(peer("[::ffff:127.0.0.1]:5000"), &none).is_local());
        // Our own non-loopback address (the proxy reaching a dashboard on 10.1.2.1) is this
        // machine, and may name the client; another address on that network is not.
        let own = |from: &str| {
            Some(ConnectionEnds {
                peer: from.parse().expect("peer"),
                local: "10.1.2.1:9000".parse().expect("local"),
            })
        };
        assert!(Client::of(own("10.1.2.1:5000"), &none).is_local());
        assert!(!Client::of(own("10.1.2.1:5000"), &forwarded).is_local());
        assert!(
            Client::of(
                own("10.1.2.1:5000"),
                &headers(&[("x-kinfra-client", "127.0.0.1")])
            )
            .is_local()
        );
        assert!(!Client::of(own("10.1.2.2:5000"), &claim).is_local());
        // HTTPS as the proxy says, only from loopback.
        let proto = headers(&[("x-forwarded-proto", "https")]);
        assert!(Client::of(peer("127.0.0.1:5000"), &proto).https);
        assert!(!Client::of(peer("10.1.2.3:5000"), &proto).https);
    }

    #[test]
    fn empty_token_never_matches() {
        let p = AccessPolicy::new(Secret::new(""), vec![]);
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
