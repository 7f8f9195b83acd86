//! What the provider tests share: a provider instance and a resource declaration built from
//! JSON, bounded waits on a resource's reported state and its run's end, quick retries, and
//! the check that nothing a resource shows holds a secret. Below them, the tests of the
//! spec-checking harness itself: Prism passes what the spec allows and the relay records what
//! it does not, so the provider tests' `assert_clean` can fail.

use crate::fake_http::Reply;
use crate::neon_fake::{TOKEN, neon};
use kinfra_core::Secret;
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::Resource;
use kinfra_core::state::{Health, ServiceState};
use kinfra_provider::provider::{InstanceContext, ResourceDecl};
use kinfra_provider::retry::{Backoff, RetryPolicy};
use serde_json::{Map, Value};
use std::future::Future;
use std::time::Duration;

/// A bound that only catches a hang.
pub(crate) const HANG: Duration = Duration::from_secs(60);

/// A JSON object as a map; anything else is an empty one.
pub(crate) fn table(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The provider instance `name` at `base_url` with `token` and its table `config` (an
/// object).
pub(crate) fn instance(name: &str, base_url: &str, token: &str, config: Value) -> InstanceContext {
    InstanceContext {
        instance: name.into(),
        token: Some(Secret::new(token)),
        base_url: Some(base_url.into()),
        config: table(config),
    }
}

/// The resource `name` declared with the table `config` (an object).
pub(crate) fn decl(name: &str, config: Value) -> ResourceDecl {
    ResourceDecl {
        name: name.into(),
        config: table(config),
    }
}

/// Retries that give up fast: `max_attempts` within 10 s, 50 to 200 ms apart (tests do not
/// wait a minute for a 5xx burst).
pub(crate) fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        max_elapsed: Duration::from_secs(10),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
    }
}

/// Waits (bounded by [`HANG`]) until `check` says yes.
pub(crate) async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + HANG;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `resource` reports `state`.
pub(crate) async fn until_state(resource: &impl Resource, state: ServiceState) {
    until(&format!("{state:?}"), || async {
        reported(resource).0 == Some(state)
    })
    .await;
}

/// Waits (bounded) until `resource`'s health is healthy.
pub(crate) async fn until_healthy(resource: &impl Resource) {
    until("healthy", || async {
        resource.health().await.ok() == Some(Health::Healthy)
    })
    .await;
}

/// Waits (bounded) until `resource`'s last sync failed with an error holding `needle` (any
/// error for `""`).
pub(crate) async fn until_sync_error(resource: &impl Resource, needle: &str) {
    until(&format!("a failed sync: {needle}"), || async {
        resource
            .sync()
            .and_then(|s| s.last_sync)
            .is_some_and(|s| !s.ok && s.error.is_some_and(|e| e.contains(needle)))
    })
    .await;
}

/// Waits (bounded) until `resource`'s last sync succeeded.
pub(crate) async fn until_synced(resource: &impl Resource) {
    until("a good sync", || async {
        resource
            .sync()
            .and_then(|s| s.last_sync)
            .is_some_and(|s| s.ok)
    })
    .await;
}

/// A start whose reads are all too slow fails with a timeout a retry may pass; the next start,
/// answered in time, runs until it is released.
pub(crate) async fn assert_slow_start_times_out_then_runs(resource: &impl Resource) {
    let error = resource.start().await.expect_err("too slow");
    assert!(!error.is_permanent(), "a timeout may pass: {error:?}");
    assert!(error.to_string().contains("no answer within"), "{error}");
    let run = resource
        .start()
        .await
        .expect("the next read answers in time");
    resource.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
}

/// The state and message `resource` reports (none and empty before its first observe).
pub(crate) fn reported(resource: &impl Resource) -> (Option<ServiceState>, String) {
    match resource.reported_state() {
        Some(s) => (Some(s.state), s.message),
        None => (None, String::new()),
    }
}

/// The exit code a run ends with (`None`: no code), waited for within [`HANG`].
pub(crate) async fn exit_code(exit: tokio::sync::oneshot::Receiver<ExitInfo>) -> Option<i32> {
    tokio::time::timeout(HANG, exit)
        .await
        .expect("the run ends")
        .ok()
        .and_then(|e| e.code)
}

/// Nothing `resource` shows (its logs, reported state, sync facts, exit reason, `Debug`)
/// nor `also` holds any of `secrets`, each a value and what it is ("the token").
pub(crate) async fn assert_no_secret(
    resource: &(impl Resource + std::fmt::Debug),
    also: &str,
    secrets: &[(&str, &str)],
) {
    let logs = resource.logs(1000).await.expect("logs");
    let mut shown: Vec<String> = logs.into_iter().map(|l| l.text).collect();
    shown.push(format!("{:?}", resource.reported_state()));
    shown.push(format!("{:?}", resource.sync()));
    shown.push(format!("{:?}", resource.exit_reason()));
    shown.push(format!("{resource:?}"));
    shown.push(also.to_owned());
    for text in shown {
        for (what, secret) in secrets {
            assert!(!text.contains(secret), "{what} shows: {text}");
        }
    }
}

async fn get(url: &str, token: &str) -> (u16, String) {
    let answer = reqwest::Client::new()
        .get(url)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("the relay answers");
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap_or_default())
}

#[tokio::test]
async fn prism_passes_spec_answers_and_the_relay_records_violations() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("harness", "idle");
    let (status, body) = get(
        &format!("{}/projects/{project}/endpoints/{endpoint}", prism.url),
        TOKEN,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"current_state\":\"idle\""), "{body}");
    prism.assert_clean(&project);

    // An answer of the wrong shape (no `endpoint`) is a response violation.
    fake.inject(
        &project,
        "GET /projects",
        Reply::json(200, r#"{"nope":1}"#),
        1,
    );
    let (status, _) = get(
        &format!("{}/projects/{project}/endpoints/{endpoint}", prism.url),
        TOKEN,
    )
    .await;
    assert_eq!(status, 500);
    // A request without the required query parameters never reaches the fake.
    let before = fake.requests(&project).len();
    let (status, _) = get(
        &format!("{}/projects/{project}/connection_uri", prism.url),
        TOKEN,
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(fake.requests(&project).len(), before);
    let violations = prism.violations(&project);
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        violations[0]
            .violation
            .as_deref()
            .is_some_and(|v| v.contains("endpoint")),
        "{violations:?}"
    );
    let result = std::panic::catch_unwind(|| prism.assert_clean(&project));
    assert!(result.is_err(), "assert_clean must fail on a violation");
}

#[tokio::test]
async fn the_fake_checks_the_token_itself() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("token", "idle");
    let (status, body) = get(
        &format!("{}/projects/{project}/endpoints/{endpoint}", prism.url),
        "wrong-token",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    prism.assert_clean(&project);
}
