//! The `railway` provider against the stateful GraphQL fake, every query and mutation (and
//! its variables) validated against Railway's own schema by graphql-js and every answer built
//! over that schema (`tests/support/railway_fake.rs`): start by restart or redeploy, stop,
//! DESIGN's state mapping (SLEEPING, CRASHED, REMOVED, SKIPPED, unknown statuses), build and
//! deploy logs in the resource's log, commands and their dry-runs with either kind of token,
//! and the faults (401, GraphQL "Not Authorized", unknown service, 429 with and without
//! Retry-After, 5xx, malformed JSON, unreachable, slow), with no token in anything shown.

use crate::fake_http::Reply;
use crate::harness::{
    self, HANG, assert_no_secret, assert_slow_start_times_out_then_runs, exit_code, quick_retry,
    reported, table, until, until_state,
};
use crate::railway_fake::{ACCOUNT_TOKEN, PROJECT_TOKEN, RailwayFake, railway};
use kinfra_cloud::railway::{RailwayProvider, RailwayResource};
use kinfra_core::resource::{Observed, Resource, ResourceError};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::LogStream;
use kinfra_provider::command::validate;
use kinfra_provider::http::HttpConfig;
use kinfra_provider::provider::{InstanceContext, Provider, ResourceDecl};
use kinfra_provider::rest::{RestClients, TokenNeed};
use serde_json::{Map, Value, json};
use std::time::Duration;

fn instance(base: &str, token: &str, project: bool) -> InstanceContext {
    let config = if project {
        json!({ "token_kind": "project" })
    } else {
        json!({})
    };
    harness::instance("rw", base, token, config)
}

fn decl(service: &str, environment: &str) -> ResourceDecl {
    harness::decl(
        "api",
        json!({
            "provider": "rw",
            "service_id": service,
            "environment_id": environment,
            "interval": "100ms",
        }),
    )
}

/// A provider whose calls give up fast (tests of faults).
fn quick_provider(timeout: Duration) -> RailwayProvider {
    RailwayProvider::with_clients(
        RestClients::new(
            "the Railway API",
            None,
            TokenNeed::Required("a Railway token"),
        )
        .with_http_config(HttpConfig {
            request_timeout: timeout,
            ..HttpConfig::default()
        })
        .with_retry(quick_retry(2)),
    )
}

fn resource(fake: &RailwayFake, ids: &(String, String)) -> RailwayResource {
    RailwayProvider::new()
        .service_resource(
            &instance(&fake.url(), ACCOUNT_TOKEN, false),
            &decl(&ids.0, &ids.1),
        )
        .expect("a valid resource")
}

fn count(fake: &RailwayFake, service: &str, operation: &str) -> usize {
    fake.requests(service)
        .iter()
        .filter(|l| l.starts_with(&format!("{operation} ")))
        .count()
}

/// What no output may show.
const SECRETS: &[(&str, &str)] = &[("the token", ACCOUNT_TOKEN), ("the token", PROJECT_TOKEN)];

#[test]
fn the_schema_check_refuses_an_invalid_field_a_bad_variable_and_a_bad_answer() {
    let fake = railway();
    let check = fake.schema_check();
    let ok = check.check(
        kinfra_cloud::railway::SERVICE_INSTANCE_QUERY,
        &json!({"serviceId": "s", "environmentId": "e"}),
    );
    assert_eq!(
        ok.map(|f| f.into_iter().map(|(name, _)| name).collect::<Vec<_>>()),
        Ok(vec!["serviceInstance".to_owned()])
    );
    let bad_field = check.check(
        "query { serviceInstance(serviceId: \"s\", environmentId: \"e\") { latestDeployment { state } } }",
        &json!({}),
    );
    assert!(
        bad_field.as_ref().is_err_and(|e| e[0].contains("state")),
        "{bad_field:?}"
    );
    let bad_variable = check.check(kinfra_cloud::railway::STOP_MUTATION, &json!({"id": 7}));
    assert!(bad_variable.is_err(), "{bad_variable:?}");
    let undeclared = check.check(
        kinfra_cloud::railway::STOP_MUTATION,
        &json!({"id": "d", "force": true}),
    );
    assert!(undeclared.is_err(), "{undeclared:?}");
    let missing = check.check(kinfra_cloud::railway::STOP_MUTATION, &json!({}));
    assert!(missing.is_err(), "{missing:?}");
    // An answer outside DeploymentStatus, and a null in a non-null field, leave the schema.
    let (_, errors) = check.execute(
        kinfra_cloud::railway::SERVICE_INSTANCE_QUERY,
        &json!({"serviceId": "s", "environmentId": "e"}),
        &json!({"serviceInstance": {"id": "i", "serviceName": "n", "sleepApplication": false,
            "latestDeployment": {"id": "d", "status": "RUNNING", "deploymentStopped": false,
            "createdAt": "x"}}}),
    );
    assert!(errors.iter().any(|e| e.contains("RUNNING")), "{errors:?}");
    let (_, errors) = check.execute(
        kinfra_cloud::railway::SERVICE_INSTANCE_QUERY,
        &json!({"serviceId": "s", "environmentId": "e"}),
        &json!({"serviceInstance": {"id": "i", "serviceName": null}}),
    );
    assert!(
        errors.iter().any(|e| e.contains("serviceName")),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_query_through_the_fake_fails_the_exchange_and_assert_clean() {
    let fake = railway();
    let (service, environment) = fake.service("invalid", Some("SUCCESS"));
    let answer = reqwest::Client::new()
        .post(format!("{}/graphql/v2", fake.url()))
        .bearer_auth(ACCOUNT_TOKEN)
        .json(&json!({
            "query": "query Bad($serviceId: String!, $environmentId: String!) { serviceInstance(serviceId: $serviceId, environmentId: $environmentId) { nope } }",
            "variables": {"serviceId": service, "environmentId": environment},
        }))
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(answer.status().as_u16(), 400);
    let body: Value = answer.json().await.expect("json");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope"))
    );
    assert_eq!(
        fake.requests(&service).len(),
        0,
        "it never reached the fake"
    );
    let result = std::panic::catch_unwind(|| fake.assert_clean(&service));
    assert!(
        result.is_err(),
        "assert_clean must fail on an invalid query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_is_restarted_runs_with_its_logs_and_stops() {
    let fake = railway();
    let ids = fake.service("lifecycle", Some("SUCCESS"));
    let service = ids.0.clone();
    fake.set_latest(&service, "SUCCESS", true);
    let res = resource(fake, &ids);
    let run = res.start().await.expect("start");
    assert!(
        !run.adopted,
        "a stopped deployment is restarted, not adopted"
    );
    assert_eq!(count(fake, &service, "RailwayDeploymentRestart"), 1);
    assert!(
        fake.requests(&service)
            .iter()
            .any(|l| l.contains(&format!("\"id\":\"{service}-d0\""))),
        "the latest deployment is restarted: {:?}",
        fake.requests(&service)
    );
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Starting), "{message}");
    assert!(message.contains("restart requested"), "{message}");
    assert_eq!(
        res.health().await.expect("health"),
        Health::Unknown,
        "not running before SUCCESS"
    );
    until_state(&res, ServiceState::Running).await;
    let (_, message) = reported(&res);
    assert!(message.contains("SUCCESS"), "{message}");
    assert!(
        message.contains("lifecycle-api.up.railway.app"),
        "{message}"
    );
    assert_eq!(res.health().await.expect("health"), Health::Healthy);
    let sync = res.sync().expect("sync facts");
    assert_eq!(sync.provider_state.as_deref(), Some("SUCCESS"));
    assert!(sync.last_sync.is_some_and(|s| s.ok));
    let conn = res.connection();
    assert_eq!(conn.host, "lifecycle-api.up.railway.app");
    assert_eq!(
        conn.field("url").as_deref(),
        Some("https://lifecycle-api.up.railway.app")
    );
    // Build and deploy logs arrive in the resource's log, each line once.
    fake.deploy_log(&service, "GET /healthz 200", "info");
    fake.deploy_log(&service, "panic: out of cheese", "error");
    until("the deploy logs arrive", || async {
        res.logs(1000)
            .await
            .expect("logs")
            .iter()
            .any(|l| l.text == "[deploy] panic: out of cheese" && l.stream == LogStream::Stderr)
    })
    .await;
    // A few more observes: nothing is repeated.
    let observes = count(fake, &service, "RailwayDeploymentLogs");
    until("two more log reads", || async {
        count(fake, &service, "RailwayDeploymentLogs") >= observes + 2
    })
    .await;
    let logs = res.logs(1000).await.expect("logs");
    let texts: Vec<&str> = logs.iter().map(|l| l.text.as_str()).collect();
    for line in [
        "[build] build of the first deployment",
        "[deploy] listening on :8080",
        "[deploy] GET /healthz 200",
        "[deploy] panic: out of cheese",
    ] {
        assert_eq!(
            texts.iter().filter(|t| **t == line).count(),
            1,
            "{line} once in {texts:?}"
        );
    }
    // Stop: deploymentStop, then the run ends stopped.
    res.stop(HANG).await.expect("stop");
    assert_eq!(count(fake, &service, "RailwayDeploymentStop"), 1);
    assert!(fake.latest(&service).is_some_and(|d| d.stopped));
    assert_eq!(exit_code(run.exit).await, Some(0));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Stopped), "{message}");
    assert_eq!(
        res.status().await.expect("status"),
        Observed::Idle,
        "stopped"
    );
    assert_no_secret(&res, "", SECRETS).await;
    fake.assert_clean(&service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_a_deployment_is_redeployed_through_building_to_running() {
    let fake = railway();
    let ids = fake.service("fresh", Some("REMOVED"));
    let service = ids.0.clone();
    let res = resource(fake, &ids);
    let run = res.start().await.expect("start");
    assert_eq!(count(fake, &service, "RailwayServiceInstanceRedeploy"), 1);
    until("BUILDING shows as starting", || async {
        let (state, message) = reported(&res);
        state == Some(ServiceState::Starting) && message.starts_with("BUILDING")
    })
    .await;
    until_state(&res, ServiceState::Running).await;
    until("the build log arrives", || async {
        res.logs(1000).await.expect("logs").iter().any(|l| {
            l.text == "[build] build step failed to cache, continuing"
                && l.stream == LogStream::Stderr
        })
    })
    .await;
    // An already running service is adopted: nothing is sent.
    let again = RailwayProvider::new()
        .service_resource(
            &instance(&fake.url(), ACCOUNT_TOKEN, false),
            &decl(&ids.0, &ids.1),
        )
        .expect("resource");
    let adopted = again.start().await.expect("adopt");
    assert!(adopted.adopted);
    assert_eq!(count(fake, &service, "RailwayServiceInstanceRedeploy"), 1);
    assert_eq!(count(fake, &service, "RailwayDeploymentRestart"), 0);
    again.release(HANG).await.expect("release");
    assert_eq!(exit_code(adopted.exit).await, Some(0));
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
    assert_eq!(
        count(fake, &service, "RailwayDeploymentStop"),
        0,
        "keep sends nothing"
    );
    fake.assert_clean(&service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_crashed_removed_skipped_and_unknown_statuses_map_as_design_says() {
    let fake = railway();
    // SLEEPING outside kinfra: the run ends, shown sleeping (final, no restart).
    let ids = fake.service("sleepy", Some("SUCCESS"));
    let res = resource(fake, &ids);
    let run = res.start().await.expect("start");
    until_state(&res, ServiceState::Running).await;
    fake.set_latest(&ids.0, "SLEEPING", false);
    assert_eq!(exit_code(run.exit).await, Some(0));
    assert_eq!(reported(&res).0, Some(ServiceState::Sleeping));
    assert_eq!(
        res.sync().and_then(|s| s.provider_state).as_deref(),
        Some("SLEEPING")
    );
    assert_eq!(res.status().await.expect("status"), Observed::Idle);
    // A sleeping service at start is not woken: shown sleeping at once.
    let run = res.start().await.expect("start asleep");
    assert_eq!(exit_code(run.exit).await, Some(0));
    assert_eq!(reported(&res).0, Some(ServiceState::Sleeping));
    assert_eq!(count(fake, &ids.0, "RailwayDeploymentRestart"), 0);
    fake.assert_clean(&ids.0);

    // CRASHED: the run fails (kinfra's restart policy: backoff), the reason names it; the
    // next start restarts the deployment.
    let ids = fake.service("crashy", Some("SUCCESS"));
    let res = resource(fake, &ids);
    let run = res.start().await.expect("start");
    until_state(&res, ServiceState::Running).await;
    fake.set_latest(&ids.0, "CRASHED", false);
    assert_eq!(exit_code(run.exit).await, Some(1));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Backoff), "{message}");
    assert!(
        res.exit_reason().is_some_and(|r| r.contains("CRASHED")),
        "{:?}",
        res.exit_reason()
    );
    let run = res.start().await.expect("restart after a crash");
    assert_eq!(count(fake, &ids.0, "RailwayDeploymentRestart"), 1);
    until_state(&res, ServiceState::Running).await;
    // SKIPPED: no change; an unknown status keeps the last state with a warning.
    fake.set_latest(&ids.0, "SKIPPED", false);
    until("SKIPPED seen", || async {
        res.sync().and_then(|s| s.provider_state).as_deref() == Some("SKIPPED")
    })
    .await;
    assert_eq!(reported(&res).0, Some(ServiceState::Running));
    // A status newer than the stored schema (its enum cannot carry it, so the answer is
    // scripted, as a newer Railway would send it).
    let newer = json!({"data": {"serviceInstance": {
        "id": "si", "serviceName": "crashy-api", "sleepApplication": false,
        "latestDeployment": {"id": format!("{}-d0", ids.0), "status": "TELEPORTED",
            "deploymentStopped": false, "staticUrl": null, "createdAt": "2026-01-01T00:00:00.000Z"}
    }}});
    fake.inject(
        &ids.0,
        "RailwayServiceInstance",
        Reply::json(200, &newer.to_string()),
        1000,
    );
    until("the unknown status is seen", || async {
        res.sync().and_then(|s| s.provider_state).as_deref() == Some("TELEPORTED")
    })
    .await;
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Running), "kept: {message}");
    assert!(message.contains("unknown status TELEPORTED"), "{message}");
    assert_eq!(res.health().await.expect("health"), Health::Unknown);
    let logs = res.logs(1000).await.expect("logs");
    assert!(
        logs.iter().any(|l| l
            .text
            .contains("warning: unknown deployment status `TELEPORTED`")),
        "{logs:?}"
    );
    assert!(
        !logs.iter().any(|l| l.text.contains("`SKIPPED`")),
        "SKIPPED is no warning: {logs:?}"
    );
    // REMOVED outside kinfra: absent, the run ends, no restart.
    fake.clear_faults(&ids.0);
    fake.set_latest(&ids.0, "REMOVED", false);
    assert_eq!(exit_code(run.exit).await, Some(0));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Stopped), "{message}");
    assert!(message.contains("absent"), "{message}");
    assert_eq!(res.status().await.expect("status"), Observed::Absent);
    fake.assert_clean(&ids.0);

    // FAILED: failed with the reason, final.
    let ids = fake.service("failing", Some("FAILED"));
    fake.next_outcome(&ids.0, "FAILED");
    let res = resource(fake, &ids);
    let run = res
        .start()
        .await
        .expect("start redeploys a failed deployment");
    assert_eq!(count(fake, &ids.0, "RailwayServiceInstanceRedeploy"), 1);
    assert_eq!(exit_code(run.exit).await, Some(1));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed), "{message}");
    assert!(message.contains("FAILED"), "{message}");
    fake.assert_clean(&ids.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_and_an_unknown_service_fail_permanently_naming_them() {
    let fake = railway();
    let ids = fake.service("refused", Some("SUCCESS"));
    // A wrong token: Railway answers 200 with errors: Not Authorized.
    let res = RailwayProvider::new()
        .service_resource(
            &instance(&fake.url(), "rw-wrong-token-123", false),
            &decl(&ids.0, &ids.1),
        )
        .expect("resource");
    let error = res.start().await.expect_err("refused");
    assert!(error.is_permanent(), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("`rw`") && text.contains("Not Authorized"),
        "{text}"
    );
    assert!(!text.contains("rw-wrong-token-123"), "{text}");
    // A 401 status.
    fake.inject(
        &ids.0,
        "RailwayServiceInstance",
        Reply::json(401, r#"{"message":"Unauthorized"}"#),
        1,
    );
    let error = resource(fake, &ids).start().await.expect_err("401");
    assert!(error.is_permanent(), "{error:?}");
    assert!(error.to_string().contains("`rw`"), "{error}");
    // The account token sent as a project token is refused too (the fake takes each in its header).
    let res = RailwayProvider::new()
        .service_resource(
            &instance(&fake.url(), ACCOUNT_TOKEN, true),
            &decl(&ids.0, &ids.1),
        )
        .expect("resource");
    assert!(res.start().await.is_err_and(|e| e.is_permanent()));
    // The project token in its header works.
    let res = RailwayProvider::new()
        .service_resource(
            &instance(&fake.url(), PROJECT_TOKEN, true),
            &decl(&ids.0, &ids.1),
        )
        .expect("resource");
    let run = res.start().await.expect("the project token works");
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
    // An unknown service: not found, permanent, named.
    let res = resource(fake, &("svc-nowhere-1".to_owned(), ids.1.clone()));
    let error = res.start().await.expect_err("unknown");
    assert!(error.is_permanent(), "{error:?}");
    assert!(
        error.to_string().contains("svc-nowhere-1") && error.to_string().contains("not found"),
        "{error}"
    );
    // A refused token during a run ends it as failed with the reason.
    let res = resource(fake, &ids);
    let run = res.start().await.expect("start");
    fake.inject(
        &ids.0,
        "RailwayServiceInstance",
        Reply::json(403, r#"{"message":"Forbidden"}"#),
        1,
    );
    assert_eq!(exit_code(run.exit).await, Some(1));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed), "{message}");
    assert!(message.contains("`rw`"), "{message}");
    assert_no_secret(&res, &text, SECRETS).await;
    fake.assert_clean(&ids.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_server_errors_and_malformed_answers_show_in_last_sync_and_keep_the_state() {
    let fake = railway();
    let ids = fake.service("faults", Some("SUCCESS"));
    let service = ids.0.clone();
    let res = resource(fake, &ids);
    let run = res.start().await.expect("start");
    until_state(&res, ServiceState::Running).await;
    let last_error = |needle: &'static str| {
        let res = &res;
        move || async move {
            res.sync()
                .and_then(|s| s.last_sync)
                .is_some_and(|s| !s.ok && s.error.is_some_and(|e| e.contains(needle)))
        }
    };
    let cleared = || async { res.sync().and_then(|s| s.last_sync).is_some_and(|s| s.ok) };
    // 429 with Retry-After, then without.
    fake.inject(
        &service,
        "RailwayServiceInstance",
        Reply::json(429, r#"{"message":"rate limited"}"#).header("Retry-After", "1"),
        1,
    );
    until("the 429 shows in last_sync", last_error("429")).await;
    assert!(last_error("retry after 1s")().await, "{:?}", res.sync());
    until("cleared after Retry-After", cleared).await;
    fake.inject(
        &service,
        "RailwayServiceInstance",
        Reply::json(429, r#"{"message":"rate limited"}"#),
        1,
    );
    until("the 429 without Retry-After shows", last_error("429")).await;
    until("cleared", cleared).await;
    assert_eq!(reported(&res).0, Some(ServiceState::Running));
    // A burst of 5xx: shown, state kept, then cleared.
    fake.inject(
        &service,
        "RailwayServiceInstance",
        Reply::json(502, r#"{"message":"bad gateway"}"#),
        3,
    );
    until("the 502 shows in last_sync", last_error("HTTP 502")).await;
    assert_eq!(reported(&res).0, Some(ServiceState::Running), "kept");
    until("cleared", cleared).await;
    // Malformed JSON, and a GraphQL error in a 200 answer.
    fake.inject(
        &service,
        "RailwayServiceInstance",
        Reply::json(200, r#"{"data": {"serviceInst"#),
        1,
    );
    until("the malformed answer shows", last_error("malformed JSON")).await;
    until("cleared", cleared).await;
    fake.inject(
        &service,
        "RailwayServiceInstance",
        Reply::json(
            200,
            r#"{"data":null,"errors":[{"message":"Problem processing request"}]}"#,
        ),
        1,
    );
    until(
        "the GraphQL error shows with its message",
        last_error("Problem processing request"),
    )
    .await;
    until("cleared", cleared).await;
    assert_eq!(reported(&res).0, Some(ServiceState::Running));
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
    assert_no_secret(&res, "", SECRETS).await;
    fake.assert_clean(&service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_engine_unavailable_and_a_slow_one_times_out() {
    // Nothing listens on port 1.
    let res = RailwayProvider::new()
        .service_resource(
            &instance("http://127.0.0.1:1", ACCOUNT_TOKEN, false),
            &decl("svc-x", "env-x"),
        )
        .expect("resource");
    let error = res.start().await.expect_err("no API");
    assert!(
        matches!(error, ResourceError::EngineUnavailable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("`rw`"), "{error}");

    let fake = railway();
    let ids = fake.service("slow", Some("SUCCESS"));
    let res = quick_provider(Duration::from_millis(300))
        .service_resource(
            &instance(&fake.url(), ACCOUNT_TOKEN, false),
            &decl(&ids.0, &ids.1),
        )
        .expect("resource");
    fake.inject(
        &ids.0,
        "RailwayServiceInstance",
        Reply::json(200, "{}").delayed(Duration::from_secs(3)),
        2,
    );
    assert_slow_start_times_out_then_runs(&res).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_a_dry_run_that_sends_nothing_and_shows_no_token() {
    let fake = railway();
    let ids = fake.service("dryrun", Some("SUCCESS"));
    let provider = RailwayProvider::new();
    let d = decl(&ids.0, &ids.1);
    let command_ids: Vec<&str> = provider.commands().iter().map(|c| c.id.as_str()).collect();
    assert_eq!(command_ids, ["deploy", "redeploy", "sleep"]);
    let base = json!({"serviceId": ids.0, "environmentId": ids.1});
    let with = |extra: Value| {
        let mut v = base.clone();
        if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
            v.extend(extra);
        }
        v
    };
    let cases = [
        (
            "deploy",
            json!({}),
            "serviceInstanceDeployV2",
            with(json!({})),
        ),
        (
            "deploy",
            json!({"commit_sha": "4f1c2ab"}),
            "serviceInstanceDeployV2",
            with(json!({"commitSha": "4f1c2ab"})),
        ),
        (
            "redeploy",
            json!({}),
            "serviceInstanceRedeploy",
            with(json!({})),
        ),
        (
            "sleep",
            json!({"enabled": true}),
            "serviceInstanceUpdate",
            with(json!({"input": {"sleepApplication": true}})),
        ),
    ];
    for project in [false, true] {
        let token = if project {
            PROJECT_TOKEN
        } else {
            ACCOUNT_TOKEN
        };
        let ctx = instance(&fake.url(), token, project);
        for (id, given, field, variables) in &cases {
            let spec = provider.command(id).expect("command");
            assert!(spec.dry_run && !spec.confirm, "{id}");
            let checked = validate(spec, &table(given.clone())).expect("valid params");
            let result = provider
                .execute(&ctx, &d, spec, checked, true)
                .await
                .expect("dry-run");
            assert!(result.dry_run && result.success, "{id}: {result:?}");
            assert_eq!(result.requests.len(), 1, "{id}");
            let req = &result.requests[0];
            assert_eq!(req.method, "POST", "{id}");
            assert_eq!(req.url, format!("{}/graphql/v2", fake.url()), "{id}");
            let body = req.body.clone().expect("a body");
            assert!(
                body["query"].as_str().is_some_and(|q| q.contains(field)),
                "{id}: {body}"
            );
            assert_eq!(&body["variables"], variables, "{id}");
            // The dry-run's query is valid against the schema.
            assert!(
                fake.schema_check()
                    .check(body["query"].as_str().unwrap_or_default(), variables)
                    .is_ok(),
                "{id}: {body}"
            );
            let header = if project {
                "Project-Access-Token"
            } else {
                "Authorization"
            };
            assert!(
                req.headers.iter().any(|(k, v)| k == header && v == "****"),
                "{id}: {:?}",
                req.headers
            );
            let shown = serde_json::to_string(&result).expect("json");
            assert!(!shown.contains(token), "{id}: {shown}");
        }
    }
    assert!(
        fake.requests(&ids.0).is_empty(),
        "{:?}",
        fake.requests(&ids.0)
    );
    // Bad parameters are named before anything is sent.
    let spec = provider.command("sleep").expect("command");
    let problems =
        validate(spec, &table(json!({"enabled": "sometimes", "for": 1}))).expect_err("bad params");
    let text = problems.to_string();
    assert!(text.contains("enabled") && text.contains("for"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_deploy_redeploy_and_set_sleeping() {
    let fake = railway();
    let ids = fake.service("commands", Some("SUCCESS"));
    let provider = RailwayProvider::new();
    let d = decl(&ids.0, &ids.1);
    let ctx = instance(&fake.url(), ACCOUNT_TOKEN, false);
    let run = |id: &'static str, given: Value| {
        let provider = &provider;
        let (ctx, d) = (&ctx, &d);
        async move {
            let spec = provider.command(id).expect("command");
            let checked = validate(spec, &table(given)).expect("valid");
            provider.execute(ctx, d, spec, checked, false).await
        }
    };
    let deployed = run("deploy", json!({"commit_sha": "4f1c2ab"}))
        .await
        .expect("deploy");
    let new_id = format!("{}-d1", ids.0);
    assert_eq!(deployed.operation.as_deref(), Some(new_id.as_str()));
    assert_eq!(deployed.data["serviceInstanceDeployV2"], json!(new_id));
    let latest = fake.latest(&ids.0).expect("latest");
    assert_eq!(latest.id, new_id);
    assert_eq!(latest.commit.as_deref(), Some("4f1c2ab"));
    let redeployed = run("redeploy", json!({})).await.expect("redeploy");
    assert_eq!(redeployed.data["serviceInstanceRedeploy"], json!(true));
    assert_eq!(
        fake.latest(&ids.0).map(|d| d.id),
        Some(format!("{}-d2", ids.0))
    );
    run("sleep", json!({"enabled": true}))
        .await
        .expect("sleep on");
    assert_eq!(fake.sleeping_enabled(&ids.0), Some(true));
    run("sleep", json!({"enabled": false}))
        .await
        .expect("sleep off");
    assert_eq!(fake.sleeping_enabled(&ids.0), Some(false));
    // A GraphQL error is the command's error, with its message and without the token.
    let wrong = instance(&fake.url(), "rw-not-the-token-42", false);
    let spec = provider.command("redeploy").expect("command");
    let error = provider
        .execute(
            &wrong,
            &d,
            spec,
            validate(spec, &Map::new()).expect("valid"),
            false,
        )
        .await
        .expect_err("refused");
    let text = error.to_string();
    assert!(text.contains("Not Authorized"), "{text}");
    assert!(!text.contains("rw-not-the-token-42"), "{text}");
    fake.assert_clean(&ids.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_problems_are_named_by_key_at_once() {
    let provider = RailwayProvider::new();
    let mut ctx = instance("ftp://nowhere", "", false);
    ctx.token = None;
    ctx.config.insert("token_kind".into(), json!("robot"));
    let bad = ResourceDecl {
        name: "api".into(),
        config: table(json!({
            "provider": "rw",
            "environment_id": 7,
            "interval": "often",
            "colour": "blue",
        })),
    };
    let problems = provider.validate_resource(&ctx, &bad).await;
    let keys: Vec<&str> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    for key in [
        "colour",
        "service_id",
        "environment_id",
        "interval",
        "base_url",
        "token",
        "token_kind",
    ] {
        assert!(keys.contains(&key), "{key} not named: {problems:?}");
    }
    let good = provider
        .validate_resource(
            &instance("http://127.0.0.1:9", ACCOUNT_TOKEN, true),
            &decl("s", "e"),
        )
        .await;
    assert!(good.is_empty(), "{good:?}");
    let meta = provider.metadata();
    let spec = meta.resource_type("service").expect("the service type");
    let names: Vec<&str> = spec.config.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        ["service_id", "environment_id", "operation_timeout", "logs"]
    );
    assert!(spec.config.iter().all(|k| !k.description.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_renders_the_start_after_one_read_and_sends_nothing_else() {
    let fake = railway();
    let provider = RailwayProvider::new();
    let ctx = instance(&fake.url(), ACCOUNT_TOKEN, false);
    for (tag, status, stopped, wanted) in [
        (
            "planstopped",
            Some("SUCCESS"),
            true,
            Some("deploymentRestart"),
        ),
        (
            "plancrashed",
            Some("CRASHED"),
            false,
            Some("deploymentRestart"),
        ),
        (
            "planremoved",
            Some("REMOVED"),
            false,
            Some("serviceInstanceRedeploy"),
        ),
        ("plannone", None, false, Some("serviceInstanceRedeploy")),
        ("planrunning", Some("SUCCESS"), false, None),
        ("plansleeping", Some("SLEEPING"), false, None),
    ] {
        let ids = fake.service(tag, status);
        if stopped {
            fake.set_latest(&ids.0, "SUCCESS", true);
        }
        let planned = provider
            .planned_start(&ctx, &decl(&ids.0, &ids.1))
            .await
            .expect("planned")
            .expect("the provider renders its start");
        match wanted {
            Some(field) => {
                assert_eq!(planned.len(), 1, "{tag}: {planned:?}");
                let body = planned[0].body.clone().expect("a body");
                assert!(
                    body["query"].as_str().is_some_and(|q| q.contains(field)),
                    "{tag}: {body}"
                );
                let shown = serde_json::to_string(&planned).expect("json");
                assert!(!shown.contains(ACCOUNT_TOKEN), "{tag}: {shown}");
            }
            None => assert!(planned.is_empty(), "{tag}: {planned:?}"),
        }
        let sent = fake.requests(&ids.0);
        assert!(
            sent.iter()
                .all(|l| l.starts_with("RailwayServiceInstance ")),
            "{tag}: only the read: {sent:?}"
        );
        fake.assert_clean(&ids.0);
    }
}
