//! The shared HTTP client, retries and the token bucket against a real local HTTP server.

use crate::fake_http::{FakeHttp, Reply};
use kinfra_core::Secret;
use kinfra_provider::http::{Auth, HttpClient, HttpConfig, HttpError, HttpRequest};
use kinfra_provider::ratelimit::TokenBucket;
use kinfra_provider::retry::{Backoff, RetryPolicy, send_with_retry};
use std::time::Duration;

const SECRET: &str = "s3cr3t-T0KEN-value";

fn client(request_timeout: Duration) -> HttpClient {
    HttpClient::new(HttpConfig {
        connect_timeout: Duration::from_secs(5),
        request_timeout,
        ..HttpConfig::default()
    })
    .expect("client")
}

fn quick_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        max_elapsed: Duration::from_secs(60),
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(50),
        },
    }
}

/// Bounds a whole test step so a hang fails instead of blocking the run.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("hung for 60 s")
}

#[tokio::test]
async fn every_auth_type_is_seen_on_the_wire_and_never_in_errors() {
    let server = FakeHttp::start(Reply::json(401, r#"{"error":"nope"}"#)).await;
    let http = client(Duration::from_secs(10));
    let auths = [
        Auth::Bearer(Secret::new(SECRET)),
        Auth::Basic {
            user: "alice".into(),
            password: Secret::new(SECRET),
        },
        Auth::Header {
            name: "X-API-Key".into(),
            value: Secret::new(SECRET),
        },
        Auth::Query {
            name: "api_key".into(),
            value: Secret::new(SECRET),
        },
    ];
    for auth in auths {
        let request = HttpRequest::get(server.url("/v1/thing?page=1")).auth(auth);
        let error = bounded(http.send(&request)).await.expect_err("401");
        let shown = format!("{error} {error:?} {request:?}");
        assert!(!shown.contains(SECRET), "secret leaked: {shown}");
        assert_eq!(error.status(), Some(401), "{error}");
    }
    let seen = server.wait_seen(4).await;
    let ua = format!("kinfra/{}", env!("CARGO_PKG_VERSION"));
    for s in &seen {
        assert_eq!(s.header("user-agent"), Some(ua.as_str()), "{s:?}");
    }
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    // base64("alice:s3cr3t-T0KEN-value")
    assert_eq!(
        seen[1].header("authorization"),
        Some("Basic YWxpY2U6czNjcjN0LVQwS0VOLXZhbHVl")
    );
    assert_eq!(seen[2].header("x-api-key"), Some(SECRET));
    assert_eq!(seen[2].header("authorization"), None);
    assert_eq!(seen[3].target, format!("/v1/thing?page=1&api_key={SECRET}"));
    assert_eq!(seen[3].header("authorization"), None);
}

#[tokio::test]
async fn status_errors_carry_the_code_and_a_body_excerpt_and_are_not_retried_when_4xx() {
    let server = FakeHttp::start(Reply::json(404, r#"{"error":"no such database"}"#)).await;
    let http = client(Duration::from_secs(10));
    let request = HttpRequest::get(server.url("/db/x"));
    let error = bounded(send_with_retry(&http, None, &request, &quick_policy(5)))
        .await
        .expect_err("404");
    match &error {
        HttpError::Status {
            code, body_excerpt, ..
        } => {
            assert_eq!(*code, 404);
            assert!(body_excerpt.contains("no such database"), "{error}");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    assert_eq!(server.seen().len(), 1, "a 4xx was retried");
}

#[tokio::test]
async fn rate_limited_with_retry_after_waits_before_the_next_request() {
    let server = FakeHttp::start(Reply::json(200, r#"{"ok":true}"#)).await;
    server.script([Reply::status(429).header("Retry-After", "1")]);
    let http = client(Duration::from_secs(10));
    // The backoff is tiny: only honouring Retry-After explains a gap of a second.
    let request = HttpRequest::get(server.url("/r"));
    let response = bounded(send_with_retry(&http, None, &request, &quick_policy(5)))
        .await
        .expect("success after the rate limit");
    assert_eq!(response.status, 200);
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(990),
        "the retry came {gap:?} after a 429 with Retry-After: 1"
    );
}

#[tokio::test]
async fn a_retry_after_longer_than_the_budget_goes_back_to_the_caller() {
    let server = FakeHttp::start(Reply::status(200)).await;
    server.script([Reply::status(429).header("Retry-After", "3600")]);
    let http = client(Duration::from_secs(10));
    let request = HttpRequest::get(server.url("/r"));
    let error = bounded(send_with_retry(&http, None, &request, &quick_policy(5)))
        .await
        .expect_err("rate limited");
    assert!(
        matches!(error, HttpError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
        "{error:?}"
    );
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn rate_limited_without_retry_after_and_503_back_off_and_succeed() {
    let server = FakeHttp::start(Reply::json(200, r#"{"ok":true}"#)).await;
    server.script([
        Reply::status(429),
        Reply::status(503),
        Reply::status(503).header("Retry-After", "0"),
    ]);
    let http = client(Duration::from_secs(10));
    let request = HttpRequest::get(server.url("/r"));
    let response = bounded(send_with_retry(&http, None, &request, &quick_policy(5)))
        .await
        .expect("success after backing off");
    assert_eq!(response.status, 200);
    assert_eq!(server.seen().len(), 4);
}

#[tokio::test]
async fn a_500_burst_is_retried_until_success_and_attempts_are_capped() {
    let server = FakeHttp::start(Reply::json(200, r#"{"ok":true}"#)).await;
    server.script([Reply::status(500), Reply::status(502), Reply::status(500)]);
    let http = client(Duration::from_secs(10));
    let request = HttpRequest::get(server.url("/r"));
    let response = bounded(send_with_retry(&http, None, &request, &quick_policy(5)))
        .await
        .expect("success after the burst");
    assert_eq!(response.status, 200);
    assert_eq!(server.seen().len(), 4);

    server.set_default(Reply::status(500));
    let error = bounded(send_with_retry(&http, None, &request, &quick_policy(3)))
        .await
        .expect_err("still failing");
    assert_eq!(error.status(), Some(500));
    assert_eq!(server.seen().len(), 4 + 3, "attempts not capped at 3");
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_error() {
    let server = FakeHttp::start(Reply::json(200, "{}").delayed(Duration::from_secs(120))).await;
    let http = client(Duration::from_millis(300));
    let request = HttpRequest::get(server.url("/slow"));
    let error = bounded(http.send(&request)).await.expect_err("timeout");
    assert!(matches!(error, HttpError::Timeout { .. }), "{error:?}");
}

/// A request's own timeout (an instance's `timeout`) wins over the client's default.
#[tokio::test]
async fn a_request_timeout_overrides_the_clients() {
    let server = FakeHttp::start(Reply::json(200, "{}").delayed(Duration::from_secs(120))).await;
    let http = client(Duration::from_secs(100));
    let request = HttpRequest::get(server.url("/slow")).timeout(Duration::from_millis(300));
    let error = bounded(http.send(&request)).await.expect_err("timeout");
    match error {
        HttpError::Timeout { after, .. } => assert_eq!(after, Duration::from_millis(300)),
        other => panic!("not a timeout: {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let http = client(Duration::from_secs(10));
    let url = kinfra_provider::http::Url::parse(&format!("http://{addr}/x")).expect("url");
    let request = HttpRequest::get(url).auth(Auth::Query {
        name: "key".into(),
        value: Secret::new(SECRET),
    });
    let error = bounded(http.send(&request)).await.expect_err("refused");
    assert!(matches!(error, HttpError::Connect { .. }), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(SECRET), "secret leaked: {shown}");
    assert!(shown.contains("key=***"), "{shown}");
}

#[tokio::test]
async fn malformed_json_is_a_decode_error_naming_the_url_without_the_secret() {
    let server = FakeHttp::start(Reply::json(200, r#"{"state": "ACTIVE""#)).await;
    let http = client(Duration::from_secs(10));
    let request = HttpRequest::get(server.url("/projects/p1")).auth(Auth::Query {
        name: "token".into(),
        value: Secret::new(SECRET),
    });
    let response = bounded(http.send(&request)).await.expect("a 200");
    let error = response
        .json::<serde_json::Value>()
        .expect_err("malformed JSON");
    let HttpError::Decode { url, .. } = &error else {
        panic!("expected a decode error, got {error:?}");
    };
    assert!(url.contains("/projects/p1"), "{error}");
    assert!(url.contains("token=***"), "{error}");
    assert!(!error.to_string().contains(SECRET), "{error}");
}

#[tokio::test]
async fn the_token_bucket_never_lets_more_than_its_capacity_through_at_once() {
    let server = FakeHttp::start(Reply::json(200, "{}")).await;
    let http = client(Duration::from_secs(10));
    // Capacity 3, one token back per 20 minutes: the other senders must wait.
    let bucket = TokenBucket::new("3/h".parse().expect("rate"));
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..10 {
        let http = http.clone();
        let bucket = bucket.clone();
        let request = HttpRequest::get(server.url(&format!("/r/{i}")));
        senders.spawn(async move {
            send_with_retry(&http, Some(&bucket), &request, &RetryPolicy::default()).await
        });
    }
    // Three answers come back...
    for _ in 0..3 {
        let done = bounded(senders.join_next())
            .await
            .expect("a sender")
            .expect("no panic");
        assert!(done.is_ok(), "{done:?}");
    }
    // ...and the seven others are parked in the bucket, so nothing else can be on the wire.
    bounded(async {
        while bucket.waiting() != 7 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(server.seen().len(), 3, "{:?}", server.seen());
    senders.abort_all();
}

#[tokio::test]
async fn the_token_bucket_lets_every_request_through_at_its_rate() {
    let server = FakeHttp::start(Reply::json(200, "{}")).await;
    let http = client(Duration::from_secs(10));
    let bucket = TokenBucket::new("20/s".parse().expect("rate"));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let http = http.clone();
        let bucket = bucket.clone();
        let request = HttpRequest::get(server.url("/r"));
        senders.spawn(async move {
            send_with_retry(&http, Some(&bucket), &request, &RetryPolicy::default()).await
        });
    }
    let results = bounded(senders.join_all()).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(server.seen().len(), 30);
}
