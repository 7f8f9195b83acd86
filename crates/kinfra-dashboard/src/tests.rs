//! Router tests: every endpoint and every rejection, without a server or a supervisor.

use super::*;
use axum::body::Body;
use axum::http::Request as HttpRequest;
use http_body_util::BodyExt;
use kinfra_core::Secret;
use kinfra_core::event::{EventKind, EventSender};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::{LogLine, LogStream, ServiceStatus, StatusReport};
use kinfra_core::view::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";

struct Fake {
    events: EventSender,
    logs: broadcast::Sender<ServiceLogLine>,
    actions: Mutex<Vec<(Action, String)>>,
}

fn line(service: &str, message: &str) -> ServiceLogLine {
    ServiceLogLine {
        service: service.into(),
        line: LogLine {
            timestamp: "2026-11-21T20:00:00.000Z".into(),
            level: "info".into(),
            stream: LogStream::Stdout,
            message: message.into(),
        },
    }
}

impl RuntimeControl for Fake {
    fn status(&self) -> StatusReport {
        let api = ServiceStatus {
            kind: "process".into(),
            state: ServiceState::Running,
            health: Health::Healthy,
            status_message: "Service is running".into(),
            port: Some(8000),
            pid: Some(4242),
            uptime_s: Some(5),
            uptime: Some("5s".into()),
            restarts: 1,
            last_exit: None,
            logs: vec![line("api", "hello").line],
            cpu_percent: Some(12.5),
            memory_bytes: Some(4 << 20),
            last_sync: None,
            provider_state: None,
            sleep: None,
            progress: None,
        };
        StatusReport::new("demo", BTreeMap::from([("api".to_string(), api)]))
    }
    fn logs(
        &self,
        service: Option<&str>,
        lines: usize,
    ) -> Result<Vec<ServiceLogLine>, ActionError> {
        match service {
            Some("api") | None => Ok((0..lines.min(3))
                .map(|i| line("api", &format!("line {i}")))
                .collect()),
            Some(other) => Err(ActionError::UnknownService(other.into())),
        }
    }
    fn subscribe_events(&self) -> broadcast::Receiver<kinfra_core::Event> {
        self.events.subscribe()
    }
    fn subscribe_logs(&self) -> broadcast::Receiver<ServiceLogLine> {
        self.logs.subscribe()
    }
    fn act(&self, action: Action, service: &str) -> BoxFuture<'_, Result<(), ActionError>> {
        let service = service.to_owned();
        Box::pin(async move {
            if service != "api" {
                return Err(ActionError::UnknownService(service));
            }
            if let Ok(mut a) = self.actions.lock() {
                a.push((action, service));
            }
            Ok(())
        })
    }
    fn request_shutdown(&self, _reason: &str) {}
    fn route_totals(&self) -> Vec<kinfra_core::metrics::RouteTotals> {
        vec![kinfra_core::metrics::RouteTotals {
            route: "api".into(),
            requests: 7,
            errors: 1,
            latency_buckets: vec![(0.01, 7), (f64::INFINITY, 0)],
        }]
    }
}

struct Harness {
    fake: Arc<Fake>,
    app: Router,
    history: Arc<EventHistory>,
}

fn harness() -> Harness {
    let fake = Arc::new(Fake {
        events: EventSender::new(256),
        logs: broadcast::channel(64).0,
        actions: Mutex::new(Vec::new()),
    });
    let history = EventHistory::new(100);
    let app = router(
        fake.clone(),
        DashboardOptions {
            policy: AccessPolicy::new(Secret::new(TOKEN), vec!["ops.example.com".into()]),
            history: history.clone(),
            limits: ConnectionLimits::default(),
        },
    );
    Harness { fake, app, history }
}

fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> HttpRequest<Body> {
    let mut b = HttpRequest::builder().method(method).uri(uri);
    let mut has_host = false;
    for (k, v) in headers {
        has_host |= k.eq_ignore_ascii_case("host");
        b = b.header(*k, *v);
    }
    if !has_host {
        b = b.header("host", "127.0.0.1:9000");
    }
    b.extension(ends(LOCAL_PEER))
        .body(Body::empty())
        .expect("request")
}

/// A client on this machine.
const LOCAL_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

/// A connection from `peer` to the dashboard on 127.0.0.1:9000.
fn ends(peer: SocketAddr) -> ConnectionEnds {
    ConnectionEnds {
        peer,
        local: SocketAddr::from(([127, 0, 0, 1], 9000)),
    }
}

/// The same request from another machine.
fn remote(mut r: HttpRequest<Body>) -> HttpRequest<Body> {
    r.extensions_mut()
        .insert(ends(SocketAddr::from(([10, 0, 0, 7], 40000))));
    r
}

async fn send(app: &Router, r: HttpRequest<Body>) -> (StatusCode, HeaderMap, String) {
    let response = app.clone().oneshot(r).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

const BEARER: (&str, &str) = ("authorization", "Bearer test-token-0123456789");

#[tokio::test]
async fn healthz_and_status() {
    let h = harness();
    let (code, _, body) = send(
        &h.app,
        req("GET", "/healthz", &[("host", "anything.example")]),
    )
    .await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "ok\n"));
    let (code, headers, body) = send(&h.app, req("GET", "/__status__", &[])).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["project"], "demo");
    assert_eq!(v["services"]["api"]["pid"], 4242);
    assert_eq!(v["stats"]["running"], 1);
    assert!(!body.contains(TOKEN));
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn unknown_host_is_refused_everywhere_but_healthz() {
    let h = harness();
    for (method, uri) in [
        ("GET", "/__status__"),
        ("GET", "/kinfra"),
        ("GET", "/metrics"),
        ("GET", "/__events__"),
        ("POST", "/__action__/restart/api"),
    ] {
        let (code, _, body) = send(
            &h.app,
            req(method, uri, &[("host", "evil.example:9000"), BEARER]),
        )
        .await;
        assert_eq!(code, StatusCode::MISDIRECTED_REQUEST, "{uri}");
        assert!(body.contains("evil.example"), "{body}");
    }
    let (code, _, _) = send(
        &h.app,
        req("GET", "/__status__", &[("host", "ops.example.com")]),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert!(h.fake.actions.lock().map(|a| a.is_empty()).unwrap_or(false));
}

#[tokio::test]
async fn history_records_a_point_per_read_for_the_plots() {
    let h = harness();
    let (code, headers, body) = send(&h.app, req("GET", "/kinfra/history", &[])).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["step_s"], 10);
    assert_eq!(v["services"]["api"][0]["cpu"], 12.5);
    assert_eq!(v["services"]["api"][0]["mem"], 4 << 20);
    assert_eq!(v["services"]["api"][0]["restarts"], 1);
    // A route seen for the first time counts from now: no requests yet.
    assert_eq!(v["routes"]["api"][0]["requests"], 0);
    assert!(v["routes"]["api"][0]["p50_ms"].is_null());
    // Only newer points with `since`.
    let now = v["now"].as_f64().unwrap_or_default();
    let (_, _, body) = send(
        &h.app,
        req("GET", &format!("/kinfra/history?since={now}"), &[]),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let points = v["services"]["api"].as_array().map_or(0, Vec::len);
    // The read itself is a point (the first one's step updated, or the next step).
    assert!((1..=2).contains(&points), "{body}");
    let (_, _, body) = send(
        &h.app,
        req(
            "GET",
            &format!("/kinfra/history?since={}", now + 3600.0),
            &[],
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["services"]["api"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn remote_reads_need_the_token() {
    let h = harness();
    for uri in [
        "/__status__",
        "/metrics",
        "/__events__",
        "/kinfra/history",
        "/__logs__/api?format=json",
        "/__logs__/api/stream",
    ] {
        let (code, _, _) = send(&h.app, remote(req("GET", uri, &[]))).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let (code, headers, _) = send(&h.app, remote(req("GET", "/kinfra", &[]))).await;
    assert_eq!(code, StatusCode::SEE_OTHER);
    assert_eq!(
        headers.get("location").map(|v| v.as_bytes()),
        Some(&b"/kinfra/login"[..])
    );
    let (code, _, _) = send(&h.app, remote(req("GET", "/__status__", &[BEARER]))).await;
    assert_eq!(code, StatusCode::OK);
    // Through the proxy (a loopback peer naming the client): the client decides.
    let (code, _, _) = send(
        &h.app,
        req("GET", "/__status__", &[("x-kinfra-client", "192.0.2.4")]),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _, _) = send(
        &h.app,
        req("GET", "/__status__", &[("x-kinfra-client", "127.0.0.1")]),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    // A remote client cannot claim to be local.
    let (code, _, _) = send(
        &h.app,
        remote(req(
            "GET",
            "/__status__",
            &[("x-kinfra-client", "127.0.0.1")],
        )),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // Without a known peer (the router alone), the client counts as remote.
    let mut bare = req("GET", "/__status__", &[]);
    bare.extensions_mut().remove::<ConnectionEnds>();
    let (code, _, _) = send(&h.app, bare).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn actions_need_token_and_same_origin() {
    let h = harness();
    let uri = "/__action__/restart/api";
    let (code, _, body) = send(&h.app, req("POST", uri, &[])).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    let (code, _, _) = send(
        &h.app,
        req("POST", uri, &[("authorization", "Bearer nope")]),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _, _) = send(
        &h.app,
        req("POST", uri, &[BEARER, ("origin", "http://evil.example")]),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // The token as a cookie is no session.
    let (code, _, _) = send(
        &h.app,
        req(
            "POST",
            uri,
            &[
                ("cookie", "kinfra_session=test-token-0123456789"),
                ("origin", "http://127.0.0.1:9000"),
            ],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let session = format!("kinfra_session={}", h.login().await);
    let cookie = ("cookie", session.as_str());
    let (code, _, _) = send(&h.app, req("POST", uri, &[cookie])).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "a cookie without Origin must not act"
    );
    assert!(h.fake.actions.lock().map(|a| a.is_empty()).unwrap_or(false));

    let (code, _, body) = send(&h.app, req("POST", uri, &[BEARER])).await;
    assert_eq!(code, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v, serde_json::json!({"success": true, "service": "api"}));
    let (code, _, _) = send(
        &h.app,
        req(
            "POST",
            "/__action__/stop/api",
            &[cookie, ("origin", "http://127.0.0.1:9000")],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let actions = h.fake.actions.lock().map(|a| a.clone()).unwrap_or_default();
    assert_eq!(
        actions,
        vec![
            (Action::Restart, "api".into()),
            (Action::Stop, "api".into())
        ]
    );

    let (code, _, body) = send(&h.app, req("POST", "/__action__/restart/nope", &[BEARER])).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        body.contains("\"success\":false") && body.contains("nope"),
        "{body}"
    );
    let (code, _, _) = send(&h.app, req("POST", "/__action__/explode/api", &[BEARER])).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _, _) = send(&h.app, req("GET", uri, &[BEARER])).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
}

fn login_form(token: &str, origin: &str) -> HttpRequest<Body> {
    HttpRequest::builder()
        .method("POST")
        .uri("/kinfra/login")
        .header("host", "127.0.0.1:9000")
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .extension(ends(LOCAL_PEER))
        .body(Body::from(format!("token={token}")))
        .expect("request")
}

/// The `Set-Cookie` values of a response.
fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect()
}

impl Harness {
    /// Logs in with the token; returns the session id from the cookie.
    async fn login(&self) -> String {
        let (code, headers, _) = send(&self.app, login_form(TOKEN, "http://127.0.0.1:9000")).await;
        assert_eq!(code, StatusCode::SEE_OTHER);
        let cookies = set_cookies(&headers);
        cookies
            .first()
            .and_then(|c| c.strip_prefix("kinfra_session="))
            .and_then(|c| c.split(';').next())
            .expect("session cookie")
            .to_owned()
    }
}

#[tokio::test]
async fn login_sets_strict_http_only_cookies_scoped_to_the_dashboard() {
    let h = harness();
    let (code, headers, _) = send(&h.app, login_form(TOKEN, "http://127.0.0.1:9000")).await;
    assert_eq!(code, StatusCode::SEE_OTHER);
    let cookies = set_cookies(&headers);
    let paths: Vec<&str> = cookies
        .iter()
        .filter_map(|c| c.split("; Path=").nth(1))
        .filter_map(|rest| rest.split(';').next())
        .collect();
    assert_eq!(paths, auth::COOKIE_PATHS.to_vec(), "{cookies:?}");
    let id = cookies[0]
        .strip_prefix("kinfra_session=")
        .and_then(|c| c.split(';').next())
        .unwrap_or("");
    assert!(id.len() >= 32, "{cookies:?}");
    for cookie in &cookies {
        assert!(
            cookie.starts_with(&format!("kinfra_session={id};")),
            "{cookie}"
        );
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        assert!(!cookie.contains(TOKEN), "the token in a cookie: {cookie}");
        assert!(!cookie.contains("Secure"), "{cookie}");
    }
    let (code, headers, _) = send(&h.app, login_form("wrong", "http://127.0.0.1:9000")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(headers.get("set-cookie").is_none());
    let (code, _, _) = send(&h.app, login_form(TOKEN, "http://evil.example")).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let cookie = format!("kinfra_session={id}");
    let (_, _, body) = send(
        &h.app,
        remote(req("GET", "/kinfra/session", &[("cookie", &cookie)])),
    )
    .await;
    assert!(body.contains("\"authenticated\":true"), "{body}");
    assert!(body.contains("\"can_read\":true"), "{body}");
    assert!(!body.contains(TOKEN));
    // The token itself is not a session.
    let (_, _, body) = send(
        &h.app,
        remote(req(
            "GET",
            "/kinfra/session",
            &[("cookie", "kinfra_session=test-token-0123456789")],
        )),
    )
    .await;
    assert!(body.contains("\"authenticated\":false"), "{body}");
    // Over HTTPS (as the proxy on loopback says), the cookies are Secure.
    let mut https = login_form(TOKEN, "https://127.0.0.1:9000");
    https
        .headers_mut()
        .insert("x-forwarded-proto", HeaderValue::from_static("https"));
    let (code, headers, _) = send(&h.app, https).await;
    assert_eq!(code, StatusCode::SEE_OTHER);
    assert!(
        set_cookies(&headers)
            .iter()
            .all(|c| c.ends_with("; Secure")),
        "{:?}",
        set_cookies(&headers)
    );
}

#[tokio::test]
async fn a_session_reads_and_acts_until_logout() {
    let h = harness();
    let id = h.login().await;
    let cookie = format!("kinfra_session={id}");
    let origin = ("origin", "http://127.0.0.1:9000");
    let (code, _, _) = send(
        &h.app,
        remote(req("GET", "/__status__", &[("cookie", &cookie)])),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _) = send(
        &h.app,
        req(
            "POST",
            "/__action__/restart/api",
            &[("cookie", &cookie), origin],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    // Logout revokes the session on the server and clears every cookie.
    let (code, headers, _) = send(
        &h.app,
        req("POST", "/kinfra/logout", &[("cookie", &cookie), origin]),
    )
    .await;
    assert_eq!(code, StatusCode::SEE_OTHER);
    let cleared = set_cookies(&headers);
    assert_eq!(cleared.len(), auth::COOKIE_PATHS.len());
    assert!(
        cleared.iter().all(|c| c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let (code, _, _) = send(
        &h.app,
        req(
            "POST",
            "/__action__/restart/api",
            &[("cookie", &cookie), origin],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _, _) = send(
        &h.app,
        remote(req("GET", "/__status__", &[("cookie", &cookie)])),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.fake.actions.lock().map(|a| a.len()).unwrap_or(0),
        1,
        "only the action before logout ran"
    );
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let fake = Arc::new(Fake {
        events: EventSender::new(16),
        logs: broadcast::channel(4).0,
        actions: Mutex::new(Vec::new()),
    });
    let app = router(
        fake.clone(),
        DashboardOptions {
            policy: AccessPolicy::new(Secret::new(TOKEN), vec![])
                .with_session_lifetime(Duration::from_millis(50)),
            history: EventHistory::new(10),
            limits: ConnectionLimits::default(),
        },
    );
    let h = Harness {
        fake,
        app,
        history: EventHistory::new(10),
    };
    let id = h.login().await;
    let cookie = format!("kinfra_session={id}");
    let (code, _, _) = send(
        &h.app,
        remote(req("GET", "/__status__", &[("cookie", &cookie)])),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "fresh session");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, _, _) = send(
        &h.app,
        req(
            "POST",
            "/__action__/restart/api",
            &[("cookie", &cookie), ("origin", "http://127.0.0.1:9000")],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(h.fake.actions.lock().map(|a| a.is_empty()).unwrap_or(false));
}

#[tokio::test]
async fn pages_and_assets() {
    let h = harness();
    let (code, headers, body) = send(&h.app, req("GET", "/kinfra", &[])).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("<title>kinfra</title>"));
    assert!(
        body.contains("href=\"/kinfra/fleet\""),
        "the page links to the fleet page"
    );
    let (fleet_code, _, _) = send(&h.app, req("GET", "/kinfra/fleet", &[])).await;
    assert_eq!(fleet_code, StatusCode::OK, "the fleet page answers");
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        csp.contains("default-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(
        headers.get("x-frame-options").map(|v| v.as_bytes()),
        Some(&b"DENY"[..])
    );
    let (code, headers, body) = send(&h.app, req("GET", "/kinfra/assets/kinfra.js", &[])).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .starts_with("text/javascript")
    );
    assert!(body.contains("EventSource"));
    let (code, _, _) = send(&h.app, req("GET", "/kinfra/assets/../../etc/passwd", &[])).await;
    assert_ne!(code, StatusCode::OK);
    let (code, _, _) = send(&h.app, req("GET", "/kinfra/assets/nope.js", &[])).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _, body) = send(&h.app, req("GET", "/kinfra/login", &[])).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("login.js"));
}

#[tokio::test]
async fn logs_in_every_format() {
    let h = harness();
    let (code, _, body) = send(&h.app, req("GET", "/__logs__/api", &[])).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("logs.js"));
    let (code, _, body) = send(&h.app, req("GET", "/__logs__/api?format=json&lines=2", &[])).await;
    assert_eq!(code, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    assert_eq!(v[1]["message"], "line 1");
    let (code, headers, body) = send(
        &h.app,
        req("GET", "/__logs__/api?format=text&download=1", &[]),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("stdout info line 0"), "{body}");
    assert_eq!(
        headers.get("content-disposition").map(|v| v.as_bytes()),
        Some(&b"attachment; filename=\"api.log\""[..])
    );
    let (code, _, _) = send(&h.app, req("GET", "/__logs__/nope", &[])).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _, _) = send(&h.app, req("GET", "/__logs__/api?format=xml", &[])).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn metrics_text() {
    let h = harness();
    let (code, headers, body) = send(&h.app, req("GET", "/metrics", &[])).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        body.contains("kinfra_service_up{service=\"api\"} 1\n"),
        "{body}"
    );
    assert!(body.contains("kinfra_service_restarts_total{service=\"api\"} 1\n"));
    assert!(
        body.contains("kinfra_service_cpu_percent{service=\"api\"} 12.5\n"),
        "{body}"
    );
    assert!(body.contains("kinfra_service_memory_bytes{service=\"api\"} 4194304\n"));
}

/// Reads SSE messages (`event`, `id`, `data`) from a streaming body until `n` are seen.
async fn sse_messages(body: Body, n: usize) -> Vec<(String, Option<String>, String)> {
    let mut body = body;
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while out.len() < n {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("SSE message in time")
            .expect("frame")
            .expect("frame ok");
        if let Ok(data) = frame.into_data() {
            buf.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), None, String::new());
            for l in block.lines() {
                if let Some(v) = l.strip_prefix("event: ") {
                    event = v.into();
                }
                if let Some(v) = l.strip_prefix("id: ") {
                    id = Some(v.to_string());
                }
                if let Some(v) = l.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if !event.is_empty() {
                out.push((event, id, data));
            }
        }
    }
    out
}

fn port_event(fake: &Fake, port: u16) -> kinfra_core::Event {
    fake.events.emit(EventKind::PortAssigned {
        service: "api".into(),
        port,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_snapshot_then_batches_then_resume() {
    let h = harness();
    let _recorder = h.history.clone().record(h.fake.events.subscribe());
    for p in 1..=3 {
        port_event(&h.fake, p);
    }
    crate::tests::wait_history(&h.history, 3).await;

    // A new client gets a snapshot with the id of the last event, then the timeline.
    let response = h
        .app
        .clone()
        .oneshot(req("GET", "/__events__", &[]))
        .await
        .expect("response");
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    let mut body = response.into_body();
    let first = sse_messages(std::mem::replace(&mut body, Body::empty()), 2).await;
    assert_eq!(first[0].0, "snapshot");
    assert_eq!(first[0].1.as_deref(), Some("3"));
    assert!(first[0].2.contains("\"project\":\"demo\""));
    assert_eq!(first[1].0, "events");

    // Resume after seq 1: exactly 2 and 3, then live 4, 5 with no gap and no duplicate.
    let response = h
        .app
        .clone()
        .oneshot(req("GET", "/__events__", &[("last-event-id", "1")]))
        .await
        .expect("response");
    let body = response.into_body();
    let emitter = h.fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        port_event(&emitter, 4);
        port_event(&emitter, 5);
    });
    let msgs = sse_messages(body, 4).await;
    let mut seqs = Vec::new();
    for (event, _id, data) in &msgs {
        if event == "events" {
            let v: Vec<serde_json::Value> = serde_json::from_str(data).expect("events json");
            seqs.extend(v.iter().filter_map(|e| e["seq"].as_u64()));
        } else {
            assert_eq!(event, "services", "unexpected {event}");
            assert!(data.contains("\"api\""));
        }
    }
    assert_eq!(seqs, vec![2, 3, 4, 5]);
    let ids: Vec<_> = msgs.iter().filter_map(|m| m.1.clone()).collect();
    assert_eq!(ids.last().map(String::as_str), Some("5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_too_old_an_id_starts_from_a_snapshot() {
    let h = harness();
    let _recorder = h.history.clone().record(h.fake.events.subscribe());
    for p in 1..=150 {
        port_event(&h.fake, p);
    }
    crate::tests::wait_history(&h.history, 150).await;
    let response = h
        .app
        .clone()
        .oneshot(req("GET", "/__events__", &[("last-event-id", "10")]))
        .await
        .expect("response");
    let msgs = sse_messages(response.into_body(), 1).await;
    assert_eq!(msgs[0].0, "snapshot");
    assert_eq!(msgs[0].1.as_deref(), Some("150"));
}

pub(crate) async fn wait_history(history: &EventHistory, seq: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while history.last_seq() < seq {
        assert!(
            tokio::time::Instant::now() < deadline,
            "history did not reach {seq}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A served dashboard on 127.0.0.1 port 0 with these limits.
async fn served(limits: ConnectionLimits) -> (DashboardServer, Arc<Fake>) {
    let fake = Arc::new(Fake {
        events: EventSender::new(64),
        logs: broadcast::channel(16).0,
        actions: Mutex::new(Vec::new()),
    });
    let listener = DashboardServer::bind("127.0.0.1:0", false)
        .await
        .expect("bind");
    let server = DashboardServer::serve(
        listener,
        fake.clone(),
        DashboardOptions {
            policy: AccessPolicy::new(Secret::new(TOKEN), vec![]),
            history: EventHistory::new(16),
            limits,
        },
    )
    .expect("serve");
    (server, fake)
}

/// Reads until the server closes the connection; returns what came. Panics after `limit`
/// (the generous bound that catches "never closes").
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        read.is_ok(),
        "the server kept the connection open; got {text:?}"
    );
    text
}

fn short_limits() -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(300),
        max_connections: 64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed() {
    let (server, _) = served(short_limits()).await;
    let mut s = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert_eq!(got, "");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_header_is_closed() {
    use tokio::io::AsyncWriteExt;
    let (server, _) = served(short_limits()).await;
    let mut s = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    s.write_all(b"GET /__status__ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .expect("write");
    // Keep trickling bytes: the header still has to be complete in time.
    let trickle = async {
        for _ in 0..100 {
            if s.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), trickle)
        .await
        .expect("trickle ends");
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(!got.contains("200 OK"), "{got}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed() {
    use tokio::io::AsyncWriteExt;
    let (server, _) = served(short_limits()).await;
    let mut s = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK") && got.ends_with("ok\n"),
        "{got}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_body_is_refused_and_closed() {
    use tokio::io::AsyncWriteExt;
    let (server, fake) = served(short_limits()).await;
    let addr = server.addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!(
            "POST /kinfra/login HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\ntoken="
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(!got.contains("kinfra_session"), "{got}");
    // An action whose handler does not read the body: answered, then closed.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!(
            "POST /__action__/restart/api HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Length: 200\r\n\r\nx"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(fake.actions.lock().map(|a| a.len()).unwrap_or(0), 1);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_outlives_the_idle_timeout() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (server, fake) = served(short_limits()).await;
    let mut s = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    s.write_all(b"GET /__events__ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut reader = tokio::io::BufReader::new(s);
    let mut wait_line = async |needle: &str| {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).await.expect("read");
                assert!(n > 0, "stream closed before {needle:?}");
                if line.contains(needle) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in the stream"));
    };
    wait_line("event: snapshot").await;
    // Longer than every timeout, with nothing sent by the client.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    port_event(&fake, 4242);
    wait_line("4242").await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    use tokio::io::AsyncWriteExt;
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        max_connections: 2,
    };
    let (server, _) = served(limits).await;
    let addr = server.addr();
    let first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Give the server a moment to have taken both (accepted in order).
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let got = read_until_closed(&mut third, Duration::from_secs(10)).await;
    assert_eq!(got, "", "a third connection was served");
    // One closes: a new connection is served again.
    drop(first);
    wait_until(
        Duration::from_secs(10),
        "a connection served again",
        async || {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                return false;
            };
            if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await
                .is_err()
            {
                return false;
            }
            read_until_closed(&mut s, Duration::from_secs(5))
                .await
                .ends_with("ok\n")
        },
    )
    .await;
    server.shutdown(Duration::from_secs(1)).await;
}

/// Retries `check` every 20 ms until true; panics with `what` after `limit`.
async fn wait_until(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
