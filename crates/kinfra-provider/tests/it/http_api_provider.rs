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

/// `operation` settings polling fast (the intervals of a real API are seconds).
fn operation(extra: Value) -> Value {
    let mut op = object(json!({
        "pointer": "/status",
        "done": ["finished"],
        "failed": ["failed", "error"],
        "reason": "/error",
        "interval": "20ms",
        "timeout": "60s",
    }));
    op.extend(object(extra));
    Value::Object(op)
}

/// A fake API whose start and stop begin operations: `POST …/start` answers 202 with a
/// `Location` (`/v1/operations/op-start`), `POST …/stop` answers 202 with the id in its body
/// (`{"operation": {"id": "op-stop"}}`). Each operation answers `polls[id]` (in order, the
/// last one repeated); the project turns ACTIVE / SUSPENDED only when its operation says
/// `finished`.
fn async_project(server: &FakeHttp, polls: &[(&'static str, Vec<Value>)]) {
    let state = Arc::new(Mutex::new((
        "SUSPENDED",
        polls
            .iter()
            .map(|(id, answers)| (*id, answers.clone()))
            .collect::<std::collections::HashMap<_, _>>(),
    )));
    server.route(move |seen| {
        let mut guard = state.lock().expect("lock");
        let (project, polls) = &mut *guard;
        let reply = match (seen.method.as_str(), seen.target.as_str()) {
            ("POST", "/v1/projects/p1/start") => Reply::json(202, r#"{"accepted":true}"#)
                .header("Location", "/v1/operations/op-start"),
            ("POST", "/v1/projects/p1/stop") => {
                Reply::json(202, r#"{"operation":{"id":"op-stop"}}"#)
            }
            ("GET", "/v1/projects/p1") => Reply::json(200, &status_body(project)),
            ("GET", target) => {
                let id = target.strip_prefix("/v1/operations/")?;
                let answers = polls.get_mut(id)?;
                let answer = if answers.len() > 1 {
                    answers.remove(0)
                } else {
                    answers.first()?.clone()
                };
                if answer["status"] == "finished" {
                    *project = if id == "op-start" {
                        "ACTIVE"
                    } else {
                        "SUSPENDED"
                    };
                }
                Reply::json(200, &answer.to_string())
            }
            _ => return None,
        };
        Some(reply)
    });
}

fn async_decl(op: Value) -> ResourceDecl {
    project(json!({
        "start": { "method": "POST", "path": "/projects/{project_id}/start" },
        "stop": { "method": "POST", "path": "/projects/{project_id}/stop" },
        "operation": op,
    }))
}

fn targets(server: &FakeHttp) -> Vec<String> {
    server
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.target))
        .collect()
}

/// A 202 start is followed: `start()` (the supervisor's `starting`) lasts through the pending
/// polls of its `Location` until the operation says done, and only then does the observe loop
/// read the project; a 202 stop names its id in the body and is polled at `operation.status`.
#[tokio::test]
async fn a_202_start_and_stop_stay_pending_through_their_operation_until_done() {
    let server = FakeHttp::start(Reply::status(404)).await;
    let running = json!({ "status": "running" });
    let finished = json!({ "status": "finished" });
    async_project(
        &server,
        &[
            (
                "op-start",
                vec![running.clone(), running.clone(), finished.clone()],
            ),
            ("op-stop", vec![running.clone(), finished.clone()]),
        ],
    );
    let provider = HttpApiProvider::new();
    let d = async_decl(operation(json!({
        "status": "/operations/{id}",
        "id": "/operation/id",
    })));
    assert!(
        provider
            .validate_resource(&instance(&server, json!({})), &d)
            .await
            .is_empty()
    );
    let r = api(&provider, &server, json!({}), &d);
    let mut run = tokio::time::timeout(Duration::from_secs(60), r.start())
        .await
        .expect("no hang")
        .expect("start");
    // Nothing was read of the project before the operation finished.
    let seen = targets(&server);
    assert_eq!(
        seen[..4],
        [
            "POST /v1/projects/p1/start",
            "GET /v1/operations/op-start",
            "GET /v1/operations/op-start",
            "GET /v1/operations/op-start",
        ],
        "{seen:?}"
    );
    assert!(
        server.seen()[1].header("authorization").is_some(),
        "the poll of the instance's own origin carries its credentials"
    );
    let mut observed = r.observed().expect("a live run");
    wait_for(&mut observed, "ACTIVE", |s| {
        s.provider_state.as_deref() == Some("ACTIVE")
    })
    .await;
    assert!(run.exit.try_recv().is_err(), "the run ended while running");

    let before = server.seen().len();
    tokio::time::timeout(Duration::from_secs(60), r.stop(Duration::from_secs(60)))
        .await
        .expect("no hang")
        .expect("stop");
    let seen: Vec<String> = targets(&server)
        .into_iter()
        .skip(before)
        .filter(|t| !t.ends_with("/projects/p1"))
        .collect();
    assert_eq!(
        seen[..3],
        [
            "POST /v1/projects/p1/stop",
            "GET /v1/operations/op-stop",
            "GET /v1/operations/op-stop",
        ],
        "{seen:?}"
    );
    let exit = tokio::time::timeout(Duration::from_secs(60), run.exit)
        .await
        .expect("the run ends")
        .expect("an exit");
    assert_eq!(exit.code, Some(0));
    let logs: Vec<String> = r
        .logs(100)
        .await
        .expect("logs")
        .into_iter()
        .map(|l| l.text)
        .collect();
    for line in [
        // No id in the start's answer: the operation is named by its Location.
        "start: operation /v1/operations/op-start accepted",
        "start: operation /v1/operations/op-start ended `finished` after 3 polls",
        "stop: operation op-stop ended `finished` after 2 polls",
    ] {
        assert!(logs.iter().any(|l| l.contains(line)), "{line} in {logs:?}");
    }
}

/// A failed operation fails the start with the provider's reason (and the operation's id);
/// no run begins.
#[tokio::test]
async fn a_202_start_whose_operation_fails_fails_with_the_providers_reason() {
    let server = FakeHttp::start(Reply::status(404)).await;
    async_project(
        &server,
        &[(
            "op-start",
            vec![
                json!({ "status": "running" }),
                json!({ "status": "error", "error": "quota exceeded for s3cret-token" }),
            ],
        )],
    );
    let provider = HttpApiProvider::new();
    let r = api(
        &provider,
        &server,
        json!({}),
        &async_decl(operation(json!({}))),
    );
    let error = tokio::time::timeout(Duration::from_secs(60), r.start())
        .await
        .expect("no hang")
        .expect_err("the operation failed")
        .to_string();
    assert!(error.starts_with("start failed"), "{error}");
    assert!(
        error.contains("operation /v1/operations/op-start failed"),
        "{error}"
    );
    assert!(error.contains("quota exceeded"), "{error}");
    assert!(!error.contains(TOKEN), "{error}");
    assert!(r.observed().is_none(), "a run began after a failed start");
    assert!(
        !targets(&server).contains(&"GET /v1/projects/p1".to_owned()),
        "{:?}",
        targets(&server)
    );
}

/// An operation that never ends fails the start when its `timeout` passes.
#[tokio::test]
async fn a_202_start_whose_operation_stays_pending_times_out() {
    let server = FakeHttp::start(Reply::status(404)).await;
    async_project(
        &server,
        &[("op-start", vec![json!({ "status": "running" })])],
    );
    let provider = HttpApiProvider::new();
    let r = api(
        &provider,
        &server,
        json!({}),
        &async_decl(operation(json!({ "timeout": "300ms" }))),
    );
    let error = tokio::time::timeout(Duration::from_secs(60), r.start())
        .await
        .expect("no hang")
        .expect_err("a timeout")
        .to_string();
    assert!(error.contains("still pending after 300ms"), "{error}");
    assert!(error.contains("last state `running`"), "{error}");
    assert!(r.observed().is_none());
    let polls = targets(&server)
        .iter()
        .filter(|t| t.starts_with("GET /v1/operations/"))
        .count();
    assert!(polls >= 2, "{:?}", targets(&server));
}

/// A declared command answered with a 202 is followed when the instance says how: its result
/// carries the operation's id and final state.
#[tokio::test]
async fn a_command_answered_202_carries_its_operation_and_final_state() {
    let server = FakeHttp::start(Reply::status(404)).await;
    server.route(|seen| match (seen.method.as_str(), seen.target.as_str()) {
        ("POST", "/v1/projects/p1/restart") => Some(
            Reply::json(202, r#"{"operation":{"id":"op-7"}}"#)
                .header("Operation-Location", "/v1/ops/op-7"),
        ),
        ("GET", "/v1/ops/op-7") => Some(Reply::json(200, r#"{"status":"FINISHED"}"#)),
        _ => None,
    });
    let provider = HttpApiProvider::new();
    let d = project(json!({
        "commands": [{ "id": "restart", "method": "POST", "path": "/projects/{project_id}/restart" }],
    }));
    // On the instance this time; the resource sets none.
    let inst = instance(
        &server,
        json!({ "operation": operation(json!({ "id": "/operation/id" })) }),
    );
    assert!(provider.validate_resource(&inst, &d).await.is_empty());
    let result = provider
        .run_command(&inst, &d, "restart", &Map::new(), false)
        .await
        .expect("restart");
    assert!(result.success);
    assert_eq!(result.operation.as_deref(), Some("op-7"));
    assert_eq!(result.operation_state.as_deref(), Some("FINISHED"));
    assert_eq!(
        targets(&server),
        ["POST /v1/projects/p1/restart", "GET /v1/ops/op-7"]
    );
    let shown = serde_json::to_value(&result).expect("json");
    assert_eq!(shown["operation_state"], "FINISHED");

    // A failed one is the command's failure, in the provider's words.
    server.route(|seen| match (seen.method.as_str(), seen.target.as_str()) {
        ("POST", "/v1/projects/p1/restart") => {
            Some(Reply::json(202, "{}").header("Location", "/v1/ops/op-8"))
        }
        ("GET", "/v1/ops/op-8") => Some(Reply::json(
            200,
            r#"{"status":"failed","error":{"code":"busy"}}"#,
        )),
        _ => None,
    });
    let error = provider
        .run_command(&inst, &d, "restart", &Map::new(), false)
        .await
        .expect_err("the operation failed")
        .to_string();
    assert!(error.contains("operation /v1/ops/op-8 failed"), "{error}");
    assert!(error.contains(r#"{"code":"busy"}"#), "{error}");
}

#[tokio::test]
async fn operation_problems_are_named_by_key() {
    let server = FakeHttp::start(Reply::json(200, "{}")).await;
    let provider = HttpApiProvider::new();
    let d = async_decl(json!({
        "status": "/operations/{op}",
        "done": "finished",
        "timeout": "soon",
        "colour": "red",
    }));
    let problems = provider
        .validate_resource(&instance(&server, json!({})), &d)
        .await;
    let keys: Vec<&str> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    for key in [
        "operation.status",
        "operation.pointer",
        "operation.done",
        "operation.timeout",
        "operation.colour",
    ] {
        assert!(keys.contains(&key), "{key} not in {problems:?}");
    }
    let inst = instance(
        &server,
        json!({ "operation": { "pointer": 3, "done": [] } }),
    );
    let problems = provider.validate_resource(&inst, &project(json!({}))).await;
    let keys: Vec<&str> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    assert!(keys.contains(&"operation.pointer"), "{problems:?}");
    assert!(keys.contains(&"operation.done"), "{problems:?}");
}

/// Declared commands can need confirmation and take enum (and bounded) parameters; a bad
/// declaration is named by key.
#[tokio::test]
async fn declared_commands_take_confirm_enums_and_bounds() {
    let server = FakeHttp::start(Reply::json(200, "{}")).await;
    let provider = HttpApiProvider::new();
    let d = project(json!({
        "commands": [{
            "id": "resize",
            "method": "POST",
            "path": "/projects/{project_id}/resize",
            "confirm": true,
            "params": [
                { "name": "tier", "kind": "enum", "values": ["small", "large"], "required": true },
                { "name": "cpus", "kind": "integer", "min": 1, "max": 8 },
            ],
        }],
    }));
    let specs = HttpApiProvider::resource_commands(&d).expect("commands");
    assert!(specs[0].confirm);
    let params = object(json!({ "tier": "huge", "cpus": 9 }));
    let error = provider
        .run_command(&instance(&server, json!({})), &d, "resize", &params, true)
        .await
        .expect_err("bad values");
    let ProviderError::Params(errors) = error else {
        panic!("not a params error: {error}");
    };
    assert_eq!(errors.problems.len(), 2, "{errors}");
    let bad = project(json!({
        "commands": [{
            "id": "resize",
            "path": "/x",
            "confirm": "yes",
            "params": [
                { "name": "tier", "kind": "enum" },
                { "name": "cpus", "kind": "integer", "min": "one" },
            ],
        }],
    }));
    let problems = provider
        .validate_resource(&instance(&server, json!({})), &bad)
        .await;
    let keys: Vec<&str> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    for key in [
        "commands[0].confirm",
        "commands[0].params[0].values",
        "commands[0].params[1].min",
    ] {
        assert!(keys.contains(&key), "{key} not in {problems:?}");
    }
}
