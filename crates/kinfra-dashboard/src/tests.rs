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
}

struct Harness {
    fake: Arc<Fake>,
    app: Router,
    history: Arc<EventHistory>,
}

fn harness(open_reads: bool) -> Harness {
    let fake = Arc::new(Fake {
        events: EventSender::new(256),
        logs: broadcast::channel(64).0,
        actions: Mutex::new(Vec::new()),
    });
    let history = EventHistory::new(100);
    let app = router(
        fake.clone(),
        DashboardOptions {
            policy: AccessPolicy::new(
                Secret::new(TOKEN),
                vec!["ops.example.com".into()],
                open_reads,
            ),
            history: history.clone(),
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
    b.body(Body::empty()).expect("request")
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
    let h = harness(true);
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
    let h = harness(true);
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
async fn closed_reads_need_the_token() {
    let h = harness(false);
    let (code, _, _) = send(&h.app, req("GET", "/__status__", &[])).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _, _) = send(&h.app, req("GET", "/metrics", &[])).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, headers, _) = send(&h.app, req("GET", "/kinfra", &[])).await;
    assert_eq!(code, StatusCode::SEE_OTHER);
    assert_eq!(
        headers.get("location").map(|v| v.as_bytes()),
        Some(&b"/kinfra/login"[..])
    );
    let (code, _, _) = send(&h.app, req("GET", "/__status__", &[BEARER])).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn actions_need_token_and_same_origin() {
    let h = harness(true);
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
    let cookie = ("cookie", "kinfra_session=test-token-0123456789");
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

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie() {
    let h = harness(true);
    let form = |token: &str, origin: &str| {
        HttpRequest::builder()
            .method("POST")
            .uri("/kinfra/login")
            .header("host", "127.0.0.1:9000")
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}")))
            .expect("request")
    };
    let (code, headers, _) = send(&h.app, form(TOKEN, "http://127.0.0.1:9000")).await;
    assert_eq!(code, StatusCode::SEE_OTHER);
    let cookie = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(cookie.starts_with("kinfra_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let (code, headers, _) = send(&h.app, form("wrong", "http://127.0.0.1:9000")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(headers.get("set-cookie").is_none());
    let (code, _, _) = send(&h.app, form(TOKEN, "http://evil.example")).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (_, _, body) = send(
        &h.app,
        req(
            "GET",
            "/kinfra/session",
            &[("cookie", "kinfra_session=test-token-0123456789")],
        ),
    )
    .await;
    assert!(body.contains("\"authenticated\":true"), "{body}");
    assert!(!body.contains(TOKEN));
}

#[tokio::test]
async fn pages_and_assets() {
    let h = harness(true);
    let (code, headers, body) = send(&h.app, req("GET", "/kinfra", &[])).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("<title>kinfra</title>"));
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
    let h = harness(true);
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
    let h = harness(true);
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
    let h = harness(true);
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
    let h = harness(true);
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
