//! The `http-api` provider against a real, stateful local HTTP server: every auth type on the
//! wire, state mapping, start → running → stop → stopped, rate limits, a 500 burst, a slow
//! and a malformed answer, declared commands with and without a dry-run, bad parameters.

use crate::fake_http::{FakeHttp, Reply};
use kinfra_core::Secret;
use kinfra_core::resource::{Observed, Resource};
use kinfra_provider::builtin::http_api::{HttpApiProvider, HttpApiResource, MappedState};
use kinfra_provider::command::ParamProblem;
use kinfra_provider::http::HttpConfig;
use kinfra_provider::observe::ObservedStatus;
use kinfra_provider::provider::{InstanceContext, Provider, ProviderError, ResourceDecl};
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const TOKEN: &str = "s3cret-token";

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn instance(server: &FakeHttp, extra: Value) -> InstanceContext {
    let mut config = object(json!({ "provider": "http-api" }));
    config.extend(object(extra));
    InstanceContext {
        instance: "api".into(),
        token: Some(Secret::new(TOKEN)),
        base_url: Some(format!("http://{}/v1", server.addr)),
        config,
    }
}

fn decl(config: Value) -> ResourceDecl {
    ResourceDecl {
        name: "db".into(),
        config: object(config),
    }
}

/// A resource reading `/project/status` from `GET /v1/projects/{project_id}`.
fn project(extra: Value) -> ResourceDecl {
    let mut config = object(json!({
        "provider": "api",
        "interval": "50ms",
        "project_id": "p1",
        "status": { "method": "GET", "path": "/projects/{project_id}" },
        "state_pointer": "/project/status",
        "state_map": { "ACTIVE": "running", "SUSPENDED": "stopped", "BROKEN": "failed" },
    }));
    config.extend(object(extra));
    decl(Value::Object(config))
}

fn status_body(state: &str) -> String {
    json!({ "project": { "id": "p1", "status": state } }).to_string()
}

fn api(
    provider: &HttpApiProvider,
    server: &FakeHttp,
    auth: Value,
    d: &ResourceDecl,
) -> HttpApiResource {
    provider
        .api_resource(&instance(server, auth), d)
        .unwrap_or_else(|e| panic!("resource: {e}"))
}

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

#[tokio::test]
async fn every_auth_type_is_on_the_wire() {
    let server = FakeHttp::start(Reply::json(200, &status_body("ACTIVE"))).await;
    let provider = HttpApiProvider::new();
    let d = project(json!({}));
    let cases = [
        json!({}),
        json!({ "auth": "bearer" }),
        json!({ "auth": "api-key", "auth_header": "X-API-Key" }),
        json!({ "auth": "api-key", "auth_query": "api_key" }),
        json!({ "auth": "basic", "user": "alice" }),
        json!({ "auth": "custom-header", "auth_header": "X-Token" }),
        json!({ "auth": "none" }),
    ];
    for auth in &cases {
        let r = api(&provider, &server, auth.clone(), &d);
        assert_eq!(r.status().await, Ok(Observed::Running), "{auth}");
    }
    let seen = server.wait_seen(cases.len()).await;
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(seen[0].header("authorization"), Some(bearer.as_str()));
    assert_eq!(seen[1].header("authorization"), Some(bearer.as_str()));
    assert_eq!(seen[2].header("x-api-key"), Some(TOKEN));
    assert_eq!(seen[2].header("authorization"), None);
    assert_eq!(seen[3].target, format!("/v1/projects/p1?api_key={TOKEN}"));
    assert_eq!(seen[3].header("authorization"), None);
    // base64("alice:s3cret-token")
    assert_eq!(
        seen[4].header("authorization"),
        Some("Basic YWxpY2U6czNjcmV0LXRva2Vu")
    );
    assert_eq!(seen[5].header("x-token"), Some(TOKEN));
    assert_eq!(seen[6].header("authorization"), None);
    assert_eq!(seen[6].target, "/v1/projects/p1");
    assert!(seen.iter().all(|s| s.method == "GET"));
}

#[tokio::test]
async fn states_map_through_the_pointer_and_the_table_and_unknown_ones_never_fail() {
    let server = FakeHttp::start(Reply::json(200, &status_body("ACTIVE"))).await;
    server.script([
        Reply::json(200, &status_body("ACTIVE")),
        Reply::json(200, &status_body("SUSPENDED")),
        Reply::json(200, &status_body("BROKEN")),
        Reply::json(200, &status_body("RESIZING")),
        Reply::json(200, &status_body("SUSPENDING")),
        Reply::json(200, &status_body("ACTIVE")),
        Reply::json(200, &status_body("WEIRD")),
    ]);
    let provider = HttpApiProvider::new();
    let r = api(&provider, &server, json!({}), &project(json!({})));
    let expect = [
        (Observed::Running, MappedState::Running),
        (Observed::Idle, MappedState::Stopped),
        (
            Observed::Exited(kinfra_core::event::ExitInfo {
                code: Some(1),
                signal: None,
            }),
            MappedState::Failed,
        ),
        (Observed::Running, MappedState::Starting),
        (Observed::Running, MappedState::Stopping),
        (Observed::Running, MappedState::Running),
        // Unknown: the last state stays, with a warning line.
        (Observed::Running, MappedState::Running),
    ];
    for (observed, state) in expect {
        assert_eq!(r.status().await, Ok(observed));
        assert_eq!(r.state().map(|(_, s)| s), Some(state));
    }
    assert_eq!(r.state().map(|(v, _)| v).as_deref(), Some("ACTIVE"));
    let logs = r.logs(100).await.expect("logs");
    assert!(
        logs.iter().any(
            |l| l.text.contains("unknown provider state `WEIRD`") && l.text.contains("running")
        ),
        "{logs:?}"
    );
}

/// A stateful fake project: `POST …/start` and `…/stop` change what `GET` answers.
fn stateful_project(server: &FakeHttp) -> Arc<Mutex<&'static str>> {
    let state = Arc::new(Mutex::new("SUSPENDED"));
    let shared = state.clone();
    server.route(move |seen| {
        let mut state = shared.lock().expect("lock");
        match (seen.method.as_str(), seen.target.as_str()) {
            ("POST", "/v1/projects/p1/start") => *state = "ACTIVE",
            ("POST", "/v1/projects/p1/stop") => *state = "SUSPENDED",
            ("GET", "/v1/projects/p1") => {}
            _ => return Some(Reply::status(404)),
        }
        Some(Reply::json(200, &status_body(&state)))
    });
    state
}

#[tokio::test]
async fn start_runs_until_stop_and_the_run_ends_when_the_api_says_stopped() {
    let server = FakeHttp::start(Reply::status(500)).await;
    let state = stateful_project(&server);
    let provider = HttpApiProvider::new();
    let d = project(json!({
        "start": { "method": "POST", "path": "/projects/{project_id}/start", "body": { "id": "{project_id}" } },
        "stop": { "method": "POST", "path": "/projects/{project_id}/stop" },
    }));
    let r = api(&provider, &server, json!({}), &d);
    let mut run = r.start().await.expect("start");
    assert!(!run.adopted);
    let mut observed = r.observed().expect("a live run");
    wait_for(&mut observed, "ACTIVE", |s| {
        s.provider_state.as_deref() == Some("ACTIVE")
    })
    .await;
    assert_eq!(r.state().map(|(_, s)| s), Some(MappedState::Running));
    assert!(run.exit.try_recv().is_err(), "the run ended while running");
    // A second start is the same run.
    let again = r.start().await.expect("start again");
    assert!(again.adopted);
    assert_eq!(again.id, run.id);

    r.stop(Duration::from_secs(60)).await.expect("stop");
    assert_eq!(*state.lock().expect("lock"), "SUSPENDED");
    let exit = tokio::time::timeout(Duration::from_secs(60), run.exit)
        .await
        .expect("the run ends")
        .expect("an exit");
    assert_eq!(exit.code, Some(0));
    assert_eq!(r.state().map(|(_, s)| s), Some(MappedState::Stopped));
    let seen = server.seen();
    let start = seen
        .iter()
        .find(|s| s.target == "/v1/projects/p1/start")
        .expect("start was called");
    assert_eq!(start.method, "POST");
    assert_eq!(
        serde_json::from_str::<Value>(&start.body).expect("json body"),
        json!({ "id": "p1" })
    );
    assert!(seen.iter().any(|s| s.target == "/v1/projects/p1/stop"));
    // Output went to the run: the state change is in it.
    let mut lines = Vec::new();
    while let Ok(line) = run.output.try_recv() {
        lines.push(line.text);
    }
    assert!(
        lines.iter().any(|l| l.contains("`ACTIVE` → running")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn rate_limits_with_and_without_retry_after_are_not_a_failure() {
    let server = FakeHttp::start(Reply::json(200, &status_body("ACTIVE"))).await;
    server.script([
        Reply::json(200, &status_body("ACTIVE")),
        Reply::status(429).header("Retry-After", "1"),
        Reply::status(429),
        Reply::status(503).header("Retry-After", "0"),
    ]);
    let provider = HttpApiProvider::new();
    let r = api(&provider, &server, json!({}), &project(json!({})));
    let mut run = r.start().await.expect("start");
    let mut observed = r.observed().expect("live");
    let limited = wait_for(&mut observed, "a rate-limited sync", |s| {
        s.last_sync.as_ref().is_some_and(|l| !l.ok)
    })
    .await;
    let error = limited
        .last_sync
        .as_ref()
        .and_then(|l| l.error.clone())
        .unwrap_or_default();
    assert!(error.contains("429"), "{error}");
    assert!(!error.contains(TOKEN), "{error}");
    assert_eq!(r.state().map(|(_, s)| s), Some(MappedState::Running));
    let recovered = wait_for(&mut observed, "a good sync after the limits", |s| {
        s.observes >= 5 && s.last_sync.as_ref().is_some_and(|l| l.ok)
    })
    .await;
    assert_eq!(recovered.provider_state.as_deref(), Some("ACTIVE"));
    assert!(run.exit.try_recv().is_err(), "a rate limit ended the run");
    let seen = server.seen();
    // The poll after the 429 with `Retry-After: 1` waited at least that second.
    assert!(seen[2].at.duration_since(seen[1].at) >= Duration::from_secs(1));
    r.stop(Duration::from_secs(5)).await.expect("stop");
}

#[tokio::test]
async fn a_500_burst_keeps_the_state_and_recovers() {
    let server = FakeHttp::start(Reply::json(200, &status_body("ACTIVE"))).await;
    server.script([
        Reply::json(200, &status_body("ACTIVE")),
        Reply::status(500),
        Reply::status(500),
        Reply::status(500),
    ]);
    let provider = HttpApiProvider::new();
    let r = api(&provider, &server, json!({}), &project(json!({})));
    let mut run = r.start().await.expect("start");
    let mut observed = r.observed().expect("live");
    let burst = wait_for(&mut observed, "three failures", |s| {
        s.consecutive_failures >= 3
    })
    .await;
    assert_eq!(burst.provider_state.as_deref(), Some("ACTIVE"));
    assert!(burst.last_sync.as_ref().is_some_and(|l| !l.ok));
    assert_eq!(r.state().map(|(_, s)| s), Some(MappedState::Running));
    assert!(run.exit.try_recv().is_err(), "a 500 ended the run");
    wait_for(&mut observed, "recovery", |s| {
        s.consecutive_failures == 0 && s.observes >= 5
    })
    .await;
    assert!(run.exit.try_recv().is_err());
    r.stop(Duration::from_secs(5)).await.expect("stop");
}

/// What status shows (`Resource::sync`): a failing poll is `last_sync.ok = false` with the
/// error while `provider_state` keeps the last value, and a good poll clears it again.
#[tokio::test]
async fn a_500_burst_shows_in_the_sync_facts_and_clears_on_recovery() {
    let server = FakeHttp::start(Reply::json(200, &status_body("ACTIVE"))).await;
    server.script([
        Reply::json(200, &status_body("ACTIVE")),
        Reply::status(500),
        Reply::status(500),
    ]);
    let provider = HttpApiProvider::new();
    let r = api(
        &provider,
        &server,
        json!({ "auth": "api-key", "auth_query": "key" }),
        &project(json!({})),
    );
    assert_eq!(r.sync(), None, "nothing synced before a run");
    let mut run = r.start().await.expect("start");
    let mut observed = r.observed().expect("live");
    wait_for(&mut observed, "a failure", |s| s.consecutive_failures >= 1).await;
    let failing = r.sync().expect("sync facts while live");
    assert_eq!(failing.provider_state.as_deref(), Some("ACTIVE"));
    let last = failing.last_sync.expect("a sync ended");
    assert!(!last.ok, "{last:?}");
    let error = last.error.expect("the failure's text");
    assert!(error.contains("500"), "{error}");
    assert!(!error.contains(TOKEN), "the key leaked: {error}");
    assert!(run.exit.try_recv().is_err(), "a 500 ended the run");
    wait_for(&mut observed, "recovery", |s| {
        s.consecutive_failures == 0 && s.observes >= 4
    })
    .await;
    let recovered = r.sync().expect("sync facts");
    assert_eq!(recovered.provider_state.as_deref(), Some("ACTIVE"));
    let last = recovered.last_sync.expect("a sync ended");
    assert!(last.ok && last.error.is_none(), "{last:?}");
    r.stop(Duration::from_secs(5)).await.expect("stop");
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_naming_the_url_not_the_token() {
    let server =
        FakeHttp::start(Reply::json(200, &status_body("ACTIVE")).delayed(Duration::from_secs(30)))
            .await;
    let provider = HttpApiProvider::with_http_config(HttpConfig {
        request_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    });
    let r = api(
        &provider,
        &server,
        json!({ "auth": "api-key", "auth_query": "key" }),
        &project(json!({})),
    );
    let error = r.status().await.expect_err("a timeout").to_string();
    assert!(error.contains("no answer within"), "{error}");
    assert!(error.contains("/v1/projects/p1"), "{error}");
    assert!(!error.contains(TOKEN), "{error}");
}

#[tokio::test]
async fn malformed_json_is_an_error_naming_the_url() {
    let server = FakeHttp::start(Reply::json(200, "{\"project\": {\"status\": ")).await;
    let provider = HttpApiProvider::new();
    let r = api(&provider, &server, json!({}), &project(json!({})));
    let error = r.status().await.expect_err("malformed").to_string();
    assert!(error.contains("malformed JSON"), "{error}");
    assert!(error.contains("/v1/projects/p1"), "{error}");
    assert!(!error.contains(TOKEN), "{error}");
}

fn with_scale() -> ResourceDecl {
    project(json!({
        "commands": [{
            "id": "scale",
            "method": "POST",
            "path": "/projects/{project_id}/endpoints/{endpoint}",
            "description": "Set the compute size.",
            "params": [
                { "name": "endpoint", "kind": "string", "required": true },
                { "name": "replicas", "kind": "integer", "required": true },
                { "name": "autoscale", "kind": "boolean" },
            ],
        }],
    }))
}

#[tokio::test]
async fn a_declared_command_dry_runs_without_sending_and_runs_for_real() {
    let server = FakeHttp::start(Reply::json(200, r#"{"ok":true}"#)).await;
    let provider = HttpApiProvider::new();
    let d = with_scale();
    let specs = HttpApiProvider::resource_commands(&d).expect("commands");
    assert_eq!(specs.len(), 1);
    assert!(specs[0].dry_run);
    let params = object(json!({ "endpoint": "ep 1", "replicas": 3 }));
    let inst = instance(
        &server,
        json!({ "auth": "custom-header", "auth_header": "X-Token" }),
    );
    let planned = provider
        .run_command(&inst, &d, "scale", &params, true)
        .await
        .expect("dry-run");
    assert!(planned.dry_run && planned.success);
    assert_eq!(planned.requests.len(), 1);
    let request = &planned.requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.url,
        format!("http://{}/v1/projects/p1/endpoints/ep%201", server.addr)
    );
    assert_eq!(request.body, Some(json!({ "replicas": 3 })));
    assert!(
        request
            .headers
            .iter()
            .any(|(k, v)| k == "X-Token" && v == "****"),
        "{:?}",
        request.headers
    );
    let shown = serde_json::to_string(&planned).expect("json");
    assert!(!shown.contains(TOKEN), "{shown}");
    // An API key in the query is masked in the planned URL.
    let query = instance(&server, json!({ "auth": "api-key", "auth_query": "key" }));
    let planned_query = provider
        .run_command(&query, &d, "scale", &params, true)
        .await
        .expect("dry-run");
    assert_eq!(
        planned_query.requests[0].url,
        format!(
            "http://{}/v1/projects/p1/endpoints/ep%201?key=****",
            server.addr
        )
    );
    assert!(
        server.seen().is_empty(),
        "a dry-run sent {:?}",
        server.seen()
    );

    let done = provider
        .run_command(&inst, &d, "scale", &params, false)
        .await
        .expect("run");
    assert!(done.success && !done.dry_run);
    assert_eq!(done.data, json!({ "ok": true }));
    let seen = server.wait_seen(1).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/v1/projects/p1/endpoints/ep%201");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].body).expect("json"),
        json!({ "replicas": 3 })
    );
    assert_eq!(seen[0].header("x-token"), Some(TOKEN));
}

#[tokio::test]
async fn bad_params_report_every_problem_at_once_and_send_nothing() {
    let server = FakeHttp::start(Reply::json(200, "{}")).await;
    let provider = HttpApiProvider::new();
    let params = object(json!({ "replicas": "three", "autoscale": 1, "colour": "red" }));
    let error = provider
        .run_command(
            &instance(&server, json!({})),
            &with_scale(),
            "scale",
            &params,
            false,
        )
        .await
        .expect_err("bad params");
    let ProviderError::Params(errors) = error else {
        panic!("not a params error: {error}");
    };
    assert_eq!(errors.problems.len(), 4, "{errors}");
    assert!(errors.problems.contains(&ParamProblem::Unknown {
        name: "colour".into()
    }));
    assert!(errors.problems.contains(&ParamProblem::Missing {
        name: "endpoint".into()
    }));
    assert!(
        errors
            .problems
            .iter()
            .any(|p| matches!(p, ParamProblem::WrongType { name, .. } if name == "replicas"))
    );
    assert!(
        errors
            .problems
            .iter()
            .any(|p| matches!(p, ParamProblem::WrongType { name, .. } if name == "autoscale"))
    );
    let unknown = provider
        .run_command(
            &instance(&server, json!({})),
            &with_scale(),
            "nope",
            &Map::new(),
            true,
        )
        .await
        .expect_err("unknown command");
    assert!(matches!(unknown, ProviderError::UnknownCommand { .. }));
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn config_problems_are_named_by_key() {
    let server = FakeHttp::start(Reply::json(200, "{}")).await;
    let provider = HttpApiProvider::new();
    let d = decl(json!({
        "provider": "api",
        "status": { "method": "FETCH", "path": "/projects/{project_id}" },
        "state_map": { "ACTIVE": "up" },
        "colour": "red",
    }));
    let inst = instance(&server, json!({ "auth": "api-key", "rate_limit": "fast" }));
    let problems = provider.validate_resource(&inst, &d).await;
    let keys: Vec<&str> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    for key in [
        "colour",
        "status.method",
        "status.path",
        "state_map.ACTIVE",
        "auth_header",
        "rate_limit",
    ] {
        assert!(keys.contains(&key), "{key} not in {problems:?}");
    }
    assert!(
        provider
            .validate_resource(&instance(&server, json!({})), &with_scale())
            .await
            .is_empty()
    );
}
