//! Tracking an asynchronous operation (a 202 with a Location) against a real local server.

use crate::fake_http::{FakeHttp, Reply};
use kinfra_provider::http::{HttpClient, HttpConfig, HttpError, HttpRequest, Method};
use kinfra_provider::operation::{
    OperationError, OperationStatus, OperationTracker, operation_url,
};
use kinfra_provider::retry::Backoff;
use std::time::Duration;

fn tracker(timeout: Duration) -> OperationTracker {
    OperationTracker {
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(40),
        },
        timeout,
    }
}

async fn poll_once(
    http: &HttpClient,
    url: &kinfra_provider::http::Url,
) -> Result<OperationStatus, HttpError> {
    let answer: serde_json::Value = http.send(&HttpRequest::get(url.clone())).await?.json()?;
    Ok(match answer["status"].as_str() {
        Some("done") => OperationStatus::Done,
        Some("failed") => OperationStatus::Failed(answer["reason"].as_str().unwrap_or("?").into()),
        _ => OperationStatus::Pending,
    })
}

fn http() -> HttpClient {
    HttpClient::new(HttpConfig::default()).expect("client")
}

#[tokio::test]
async fn a_202_is_polled_through_pending_and_a_500_until_done() {
    let server = FakeHttp::start(Reply::json(200, r#"{"status":"done"}"#)).await;
    server.script([
        Reply::json(202, "{}").header("Location", "/operations/op-1"),
        Reply::json(200, r#"{"status":"running"}"#),
        Reply::status(500),
        Reply::json(200, r#"{"status":"running"}"#),
    ]);
    let http = http();
    let start = HttpRequest::new(Method::POST, server.url("/databases/db1/start"))
        .json(serde_json::json!({ "reason": "kinfra start" }));
    let accepted = http.send(&start).await.expect("202");
    let op = operation_url(&accepted, &start.url).expect("a Location");
    assert_eq!(op.path(), "/operations/op-1");
    let polls = tokio::time::timeout(
        Duration::from_secs(60),
        tracker(Duration::from_secs(30)).track(|| poll_once(&http, &op)),
    )
    .await
    .expect("no hang")
    .expect("done");
    assert_eq!(polls, 4);
    let seen = server.seen();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!(seen[0].body, r#"{"reason":"kinfra start"}"#);
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.target == "/operations/op-1" && s.method == "GET")
    );
}

#[tokio::test]
async fn a_failed_operation_reports_the_providers_reason() {
    let server = FakeHttp::start(Reply::json(
        200,
        r#"{"status":"failed","reason":"quota exceeded"}"#,
    ))
    .await;
    let http = http();
    let url = server.url("/operations/op-2");
    let error = tracker(Duration::from_secs(30))
        .track(|| poll_once(&http, &url))
        .await
        .expect_err("failed");
    assert_eq!(
        error,
        OperationError::Failed {
            reason: "quota exceeded".into()
        }
    );
}

#[tokio::test]
async fn a_forever_pending_operation_times_out_and_a_4xx_stops_polling() {
    let server = FakeHttp::start(Reply::json(200, r#"{"status":"running"}"#)).await;
    let http = http();
    let url = server.url("/operations/op-3");
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        tracker(Duration::from_millis(300)).track(|| poll_once(&http, &url)),
    )
    .await
    .expect("no hang")
    .expect_err("timeout");
    assert!(
        matches!(error, OperationError::Timeout { polls, .. } if polls >= 1),
        "{error:?}"
    );

    server.set_default(Reply::status(404));
    let before = server.seen().len();
    let error = tracker(Duration::from_secs(30))
        .track(|| poll_once(&http, &url))
        .await
        .expect_err("404");
    assert!(
        matches!(error, OperationError::Poll(ref e) if e.status() == Some(404)),
        "{error:?}"
    );
    assert_eq!(server.seen().len(), before + 1);
}
