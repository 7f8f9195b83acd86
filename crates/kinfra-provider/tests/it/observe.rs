//! The observe loop against a real local HTTP server: state kept through failures, rate
//! limits honoured, the loop stops when told.

use crate::fake_http::{FakeHttp, Reply};
use kinfra_provider::http::{HttpClient, HttpConfig, HttpRequest};
use kinfra_provider::observe::{self, FirstObserve, ObserveConfig, ObserveError, ObservedStatus};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// An observe that GETs `/state` and reads `state` from the JSON answer.
fn observe_state(
    http: HttpClient,
    url: kinfra_provider::http::Url,
) -> impl FnMut() -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<String, ObserveError>> + Send>,
> + Send
+ 'static {
    move || {
        let http = http.clone();
        let request = HttpRequest::get(url.clone());
        Box::pin(async move {
            let answer: serde_json::Value = http.send(&request).await?.json()?;
            answer["state"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| ObserveError::Failed("no state in the answer".into()))
        })
    }
}

/// Waits (bounded) until the published status satisfies `cond`.
async fn wait_for(
    rx: &mut watch::Receiver<ObservedStatus>,
    what: &str,
    cond: impl FnMut(&ObservedStatus) -> bool,
) -> ObservedStatus {
    let last = rx.clone();
    tokio::time::timeout(Duration::from_secs(60), rx.wait_for(cond))
        .await
        .unwrap_or_else(|_| panic!("never saw: {what}; last: {:?}", *last.borrow()))
        .expect("the loop is alive")
        .clone()
}

fn http() -> HttpClient {
    HttpClient::new(HttpConfig {
        request_timeout: Duration::from_secs(10),
        ..HttpConfig::default()
    })
    .expect("client")
}

#[tokio::test]
async fn a_500_burst_keeps_the_last_state_and_marks_the_sync_failed_until_it_recovers() {
    let server = FakeHttp::start(Reply::json(200, r#"{"state":"SUSPENDED"}"#)).await;
    server.script([
        Reply::json(200, r#"{"state":"ACTIVE"}"#),
        Reply::status(500),
        Reply::status(500),
        Reply::status(500),
    ]);
    let config = ObserveConfig {
        interval: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        first: FirstObserve::AtOnce,
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (mut rx, task) = observe::spawn(
        config,
        observe_state(http(), server.url("/state")),
        async move {
            let _ = stop_rx.await;
        },
    );
    let first = wait_for(&mut rx, "a first good sync", |s| s.last_sync.is_some()).await;
    assert_eq!(first.provider_state.as_deref(), Some("ACTIVE"));
    assert!(
        first
            .last_sync
            .as_ref()
            .is_some_and(|s| s.ok && s.error.is_none())
    );

    let failing = wait_for(&mut rx, "a failed sync", |s| {
        s.last_sync.as_ref().is_some_and(|s| !s.ok)
    })
    .await;
    assert_eq!(
        failing.provider_state.as_deref(),
        Some("ACTIVE"),
        "state lost on failure"
    );
    let sync = failing.last_sync.expect("sync");
    assert!(
        sync.error.as_deref().is_some_and(|e| e.contains("500")),
        "{sync:?}"
    );
    assert!(humantime::parse_rfc3339(&sync.at).is_ok(), "{}", sync.at);

    let third = wait_for(&mut rx, "three failures in a row", |s| {
        s.consecutive_failures == 3
    })
    .await;
    assert_eq!(third.provider_state.as_deref(), Some("ACTIVE"));

    let recovered = wait_for(&mut rx, "recovery", |s| {
        s.last_sync.as_ref().is_some_and(|s| s.ok) && s.observes > 1
    })
    .await;
    assert_eq!(recovered.provider_state.as_deref(), Some("SUSPENDED"));
    assert_eq!(recovered.consecutive_failures, 0);

    stop_tx.send(()).expect("the loop listens");
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the loop stops when told")
        .expect("no panic");
}

#[tokio::test]
async fn a_rate_limited_observe_waits_for_retry_after_and_is_no_failure_of_the_state() {
    let server = FakeHttp::start(Reply::json(200, r#"{"state":"ACTIVE"}"#)).await;
    server.script([
        Reply::json(200, r#"{"state":"ACTIVE"}"#),
        Reply::status(429).header("Retry-After", "1"),
    ]);
    let config = ObserveConfig::every(Duration::from_millis(10));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (mut rx, task) = observe::spawn(
        config,
        observe_state(http(), server.url("/state")),
        async move {
            let _ = stop_rx.await;
        },
    );
    let limited = wait_for(&mut rx, "the rate-limited sync", |s| {
        s.last_sync.as_ref().is_some_and(|s| !s.ok)
    })
    .await;
    assert_eq!(limited.provider_state.as_deref(), Some("ACTIVE"));
    wait_for(&mut rx, "the sync after the rate limit", |s| {
        s.observes >= 3
    })
    .await;
    let seen = server.seen();
    // Without Retry-After the next observe would come after ~10-80 ms.
    let gap = seen[2].at - seen[1].at;
    assert!(
        gap >= Duration::from_millis(990),
        "next observe {gap:?} after Retry-After: 1"
    );
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the loop stops when told")
        .expect("no panic");
}

#[tokio::test]
async fn the_loop_stops_while_waiting_and_sends_nothing_after() {
    let server = FakeHttp::start(Reply::json(200, r#"{"state":"ACTIVE"}"#)).await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (mut rx, task) = observe::spawn(
        ObserveConfig::every(Duration::from_secs(3600)).at_once(),
        observe_state(http(), server.url("/state")),
        async move {
            let _ = stop_rx.await;
        },
    );
    wait_for(&mut rx, "the first sync", |s| s.observes == 1).await;
    stop_tx.send(()).expect("the loop listens");
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the loop stops during its hour-long wait")
        .expect("no panic");
    assert_eq!(server.seen().len(), 1);
}
