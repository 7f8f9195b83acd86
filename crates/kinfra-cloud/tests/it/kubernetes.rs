//! The `kubernetes` provider (kube, the real client) against a stateful fake of the Kubernetes
//! API server (`tests/support/kubernetes_fake.rs`): no cluster is available here and there is
//! no spec for Prism, so the fake speaks the API server's real paths and JSON shapes (apps/v1
//! Deployment, its autoscaling/v1 `/scale` subresource, PATCH with the content types kube
//! sends, `Status` errors) and refuses, and records as a violation, what the real server would
//! refuse. Every test ends with `assert_clean`.
//!
//! Covered: start scales to the configured replicas and stop to 0 through `/scale`, the rollout
//! followed to ready, a Deployment at its replicas adopted without a write, one scaled to 0
//! outside kinfra shown stopped, a failed rollout (ProgressDeadlineExceeded) failed with the
//! reason, an unknown Progressing reason keeping the last state with a warning, the commands
//! (`scale`, `restart`) with and without a dry-run, and the faults (401/403 naming the context,
//! 404 naming namespace/name, 409, 429 with and without Retry-After, a 5xx burst, an
//! unreachable API, a slow one, malformed JSON), with the kubeconfig's token nowhere.

use crate::fake_http::Reply;
use crate::harness::{
    self, HANG, assert_no_secret, exit_code, quick_retry, reported, table, until, until_state,
    until_sync_error, until_synced,
};
use crate::kubernetes_fake::{
    BAD_TOKEN, KubeFake, TOKEN, kube, kubeconfig_file, kubeconfig_tls_file, status, tls_front,
};
use kinfra_cloud::kubernetes::{DeploymentResource, KubernetesProvider, RESTARTED_AT};
use kinfra_core::resource::{Observed, Resource, ResourceError};
use kinfra_core::state::{Health, ServiceState};
use kinfra_provider::command::validate;
use kinfra_provider::provider::{InstanceContext, Provider, ProviderError, ResourceDecl};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The instance `k8s`: the fake's kubeconfig for `namespace`, `extra` keys added.
fn instance(fake: &KubeFake, namespace: &str, extra: Value) -> InstanceContext {
    let mut config = table(json!({
        "kubeconfig": kubeconfig_file(&fake.url, namespace).display().to_string(),
        "timeout": "2s",
    }));
    config.extend(table(extra));
    InstanceContext {
        instance: "k8s".into(),
        token: None,
        base_url: None,
        config,
    }
}

fn decl(namespace: &str, name: &str, replicas: i64) -> ResourceDecl {
    harness::decl(
        "web",
        json!({
            "provider": "k8s",
            "namespace": namespace,
            "name": name,
            "replicas": replicas,
            "interval": "100ms",
        }),
    )
}

fn provider() -> KubernetesProvider {
    kinfra_core::tls::install_crypto_provider();
    KubernetesProvider::new().with_retry(quick_retry(4))
}

fn resource(ctx: &InstanceContext, decl: &ResourceDecl) -> DeploymentResource {
    provider()
        .deployment_resource(ctx, decl)
        .expect("a valid resource")
}

/// What no output may show.
const SECRETS: &[(&str, &str)] = &[("the token", TOKEN), ("the revoked token", BAD_TOKEN)];

#[tokio::test]
async fn start_scales_to_the_replicas_through_scale_and_stop_scales_to_zero() {
    let fake = kube();
    let ns = fake.namespace("life");
    fake.deployment(&ns, "web", 0);
    let ctx = instance(fake, &ns, json!({}));
    let r = resource(&ctx, &decl(&ns, "web", 3));
    assert_eq!(r.status().await.expect("status"), Observed::Idle);

    let run = r.start().await.expect("start");
    assert!(!run.adopted, "it was scaled to 0: the start scaled it");
    let writes = fake.writes(&ns);
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert!(
        writes[0].starts_with(&format!(
            "PATCH /apis/apps/v1/namespaces/{ns}/deployments/web/scale?fieldManager=kinfra \
             application/merge-patch+json"
        )),
        "{writes:#?}"
    );
    assert!(
        writes[0].ends_with(r#"{"spec":{"replicas":3}}"#),
        "{writes:#?}"
    );
    // The rollout goes through starting (pods coming up) to running.
    until("starting while the pods come up", || async {
        let (state, message) = reported(&r);
        state == Some(ServiceState::Starting) && message.contains("rolling out")
            || state == Some(ServiceState::Running)
    })
    .await;
    until_state(&r, ServiceState::Running).await;
    let (_, message) = reported(&r);
    assert!(message.contains("ready 3/3"), "{message}");
    assert_eq!(r.health().await.expect("health"), Health::Healthy);
    let sync = r.sync().expect("synced");
    assert!(sync.last_sync.expect("last sync").ok);
    assert!(
        sync.provider_state
            .as_deref()
            .is_some_and(|s| s.contains("Progressing=True NewReplicaSetAvailable")),
        "{:?}",
        sync.provider_state
    );

    r.stop(HANG).await.expect("stop");
    assert_eq!(exit_code(run.exit).await, Some(0));
    let writes = fake.writes(&ns);
    assert_eq!(writes.len(), 2, "{writes:#?}");
    assert!(
        writes[1].ends_with(r#"{"spec":{"replicas":0}}"#),
        "{writes:#?}"
    );
    assert_eq!(fake.get(&ns, "web").map(|d| d.current), Some(0));
    assert_eq!(reported(&r).0, Some(ServiceState::Stopped));
    let logs = r.logs(100).await.expect("logs");
    assert!(
        logs.iter()
            .any(|l| l.text.contains("scale Deployment `") && l.text.contains("to 3")),
        "{logs:?}"
    );
    assert_no_secret(&r, "", SECRETS).await;
    fake.assert_clean(&ns);
}

#[tokio::test]
async fn a_deployment_at_its_replicas_is_adopted_and_one_scaled_to_zero_outside_shows_stopped() {
    let fake = kube();
    let ns = fake.namespace("adopt");
    fake.deployment(&ns, "web", 2);
    let ctx = instance(fake, &ns, json!({}));
    let r = resource(&ctx, &decl(&ns, "web", 2));
    let run = r.start().await.expect("start");
    assert!(run.adopted);
    until_state(&r, ServiceState::Running).await;
    assert!(fake.writes(&ns).is_empty(), "{:#?}", fake.writes(&ns));

    // `kubectl scale --replicas=0` outside kinfra: the run ends, stopped (final).
    fake.scale_outside(&ns, "web", 0);
    assert_eq!(exit_code(run.exit).await, Some(0));
    until("stopped, outside kinfra", || async {
        let (state, message) = reported(&r);
        state == Some(ServiceState::Stopped) && message.contains("outside kinfra")
    })
    .await;
    assert!(fake.writes(&ns).is_empty(), "kinfra sent a write");
    fake.assert_clean(&ns);
}

#[tokio::test]
async fn a_failed_rollout_fails_with_the_controllers_reason() {
    let fake = kube();
    let ns = fake.namespace("fail");
    fake.deployment(&ns, "web", 0);
    fake.change(&ns, "web", |d| d.fail_rollout = true);
    let ctx = instance(fake, &ns, json!({}));
    let r = resource(&ctx, &decl(&ns, "web", 2));
    let run = r.start().await.expect("start");
    assert_eq!(exit_code(run.exit).await, Some(1));
    let (state, message) = reported(&r);
    assert_eq!(state, Some(ServiceState::Failed), "{message}");
    assert!(
        message.contains("ProgressDeadlineExceeded") && message.contains("timed out progressing"),
        "{message}"
    );
    assert!(message.contains(&format!("{ns}/web")), "{message}");
    assert_eq!(r.exit_reason().as_deref(), Some(message.as_str()));
    assert_eq!(r.health().await.expect("health"), Health::Unhealthy);
    // A start of a Deployment whose rollout failed at these replicas fails at once.
    let again = resource(&ctx, &decl(&ns, "web", 2));
    let error = again.start().await.expect_err("a failed rollout");
    assert!(error.is_permanent(), "{error}");
    assert!(
        error.to_string().contains("ProgressDeadlineExceeded"),
        "{error}"
    );
    fake.assert_clean(&ns);
}

#[tokio::test]
async fn an_unknown_progressing_reason_keeps_the_last_state_with_a_warning() {
    let fake = kube();
    let ns = fake.namespace("odd");
    fake.deployment(&ns, "web", 1);
    let ctx = instance(fake, &ns, json!({}));
    let r = resource(&ctx, &decl(&ns, "web", 1));
    let run = r.start().await.expect("start");
    until_state(&r, ServiceState::Running).await;
    fake.change(&ns, "web", |d| d.odd_reason = Some("QuotaWobble".into()));
    until("the unknown reason seen", || async {
        reported(&r).1.contains("unknown status")
    })
    .await;
    let (state, message) = reported(&r);
    assert_eq!(state, Some(ServiceState::Running), "{message}");
    assert!(message.contains("QuotaWobble"), "{message}");
    assert_eq!(r.health().await.expect("health"), Health::Unknown);
    let logs = r.logs(100).await.expect("logs");
    assert!(
        logs.iter()
            .any(|l| l.text.starts_with("warning: unknown Deployment status")),
        "{logs:?}"
    );
    r.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
    assert!(fake.writes(&ns).is_empty(), "release sent a write");
    fake.assert_clean(&ns);
}

#[tokio::test]
async fn scale_and_restart_commands_with_and_without_dry_run() {
    let fake = kube();
    let ns = fake.namespace("cmd");
    fake.deployment(&ns, "web", 1);
    let ctx = instance(fake, &ns, json!({}));
    let d = decl(&ns, "web", 1);
    let p = provider();
    let specs = p.commands();
    let ids: Vec<&str> = specs.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["scale", "restart"]);
    assert!(specs.iter().all(|c| c.dry_run));
    let scale = p.command("scale").expect("scale").clone();
    let restart = p.command("restart").expect("restart").clone();
    assert!(
        validate(&scale, &Map::new()).is_err(),
        "replicas is required"
    );
    assert!(validate(&scale, &table(json!({"replicas": -1}))).is_err());
    let five = validate(&scale, &table(json!({"replicas": 5}))).expect("valid");

    // Dry-runs send nothing and show the exact request, the token masked.
    let planned = p
        .execute(&ctx, &d, &scale, five.clone(), true)
        .await
        .expect("dry-run");
    assert!(planned.dry_run);
    let shown = serde_json::to_string(&planned).expect("json");
    let request = &planned.requests[0];
    assert_eq!(request.method, "PATCH");
    assert_eq!(
        request.url,
        format!(
            "{}/apis/apps/v1/namespaces/{ns}/deployments/web/scale?fieldManager=kinfra",
            fake.url
        )
    );
    assert!(
        request
            .headers
            .contains(&("content-type".into(), "application/merge-patch+json".into())),
        "{shown}"
    );
    assert!(
        request
            .headers
            .contains(&("Authorization".into(), "****".into())),
        "{shown}"
    );
    assert_eq!(request.body, Some(json!({"spec": {"replicas": 5}})));
    let params = validate(&restart, &Map::new()).expect("valid");
    let planned_restart = p
        .execute(&ctx, &d, &restart, params.clone(), true)
        .await
        .expect("dry-run");
    let request = &planned_restart.requests[0];
    assert_eq!(
        request.url,
        format!(
            "{}/apis/apps/v1/namespaces/{ns}/deployments/web?fieldManager=kinfra",
            fake.url
        )
    );
    assert!(
        request.headers.contains(&(
            "content-type".into(),
            "application/strategic-merge-patch+json".into()
        )),
        "{request:?}"
    );
    assert!(
        request
            .body
            .as_ref()
            .and_then(|b| b.pointer(&format!(
                "/spec/template/metadata/annotations/{}",
                RESTARTED_AT.replace('/', "~1")
            )))
            .is_some_and(Value::is_string),
        "{request:?}"
    );
    assert!(
        fake.writes(&ns).is_empty(),
        "a dry-run sent {:#?}",
        fake.writes(&ns)
    );
    let shown_all = format!("{shown}{planned_restart:?}");
    assert!(!shown_all.contains(TOKEN), "{shown_all}");

    // For real.
    let done = p
        .execute(&ctx, &d, &scale, five, false)
        .await
        .expect("scale");
    assert_eq!(done.data["replicas"], 5, "{done:?}");
    assert_eq!(fake.get(&ns, "web").map(|d| d.desired), Some(5));
    let before = fake.get(&ns, "web").map(|d| d.generation).unwrap_or(0);
    let done = p
        .execute(&ctx, &d, &restart, params, false)
        .await
        .expect("restart");
    let after = fake.get(&ns, "web").expect("the deployment");
    assert!(after.generation > before);
    assert_eq!(
        after.annotations.get(RESTARTED_AT),
        Some(&done.data["restartedAt"]),
        "{done:?}"
    );
    assert_eq!(fake.writes(&ns).len(), 2, "{:#?}", fake.writes(&ns));
    assert!(!format!("{done:?}").contains(TOKEN));
    fake.assert_clean(&ns);
}

#[tokio::test]
async fn refused_credentials_name_the_context_and_a_missing_deployment_names_it() {
    let fake = kube();
    let ns = fake.namespace("auth");
    fake.deployment(&ns, "web", 1);
    // 401: the context whose token the cluster refuses.
    let revoked = instance(fake, &ns, json!({"context": "revoked"}));
    let r = resource(&revoked, &decl(&ns, "web", 1));
    let error = r.start().await.expect_err("refused");
    assert!(error.is_permanent(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("context `revoked`") && text.contains("401"),
        "{text}"
    );
    assert_no_secret(&r, &text, SECRETS).await;
    // 403 on the scale: the same, naming the context.
    fake.deployment(&ns, "down", 0);
    let ctx = instance(fake, &ns, json!({}));
    fake.inject(
        &ns,
        "PATCH /apis/apps/v1/namespaces",
        status(
            403,
            "Forbidden",
            "deployments.apps \"down\" is forbidden: User cannot patch",
        ),
        1,
    );
    let r = resource(&ctx, &decl(&ns, "down", 1));
    let error = r.start().await.expect_err("forbidden");
    let text = error.to_string();
    assert!(
        error.is_permanent() && text.contains("context `fake`") && text.contains("403"),
        "{text}"
    );
    // 404: the namespace and name.
    let r = resource(&ctx, &decl(&ns, "missing", 1));
    let error = r.start().await.expect_err("missing");
    assert!(error.is_permanent(), "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("Deployment `{ns}/missing` not found")),
        "{error}"
    );
    assert_eq!(r.status().await.expect("status"), Observed::Absent);
    // A Deployment deleted under a run fails it naming it.
    let r = resource(&ctx, &decl(&ns, "web", 1));
    let run = r.start().await.expect("start");
    fake.delete(&ns, "web");
    assert_eq!(exit_code(run.exit).await, Some(1));
    let (state, message) = reported(&r);
    assert_eq!(state, Some(ServiceState::Failed));
    assert!(
        message.contains(&format!("`{ns}/web` not found")),
        "{message}"
    );
    fake.assert_clean(&ns);
}

#[tokio::test]
async fn a_conflict_is_reported_and_never_retried() {
    let fake = kube();
    let ns = fake.namespace("conflict");
    fake.deployment(&ns, "web", 1);
    let ctx = instance(fake, &ns, json!({}));
    let p = provider();
    let scale = p.command("scale").expect("scale").clone();
    fake.inject(
        &ns,
        "PATCH ",
        status(
            409,
            "Conflict",
            "Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified",
        ),
        5,
    );
    let params = validate(&scale, &table(json!({"replicas": 2}))).expect("valid");
    let error = p
        .execute(&ctx, &decl(&ns, "web", 1), &scale, params, false)
        .await
        .expect_err("a conflict");
    let text = error.to_string();
    assert!(matches!(error, ProviderError::Command { .. }), "{text}");
    assert!(
        text.contains("conflict (HTTP 409)") && text.contains("has been modified"),
        "{text}"
    );
    assert_eq!(
        fake.writes(&ns).len(),
        1,
        "a 409 was retried: {:#?}",
        fake.writes(&ns)
    );
    fake.assert_clean(&ns);
}

#[tokio::test]
async fn rate_limits_are_waited_out_with_and_without_retry_after() {
    let fake = kube();
    let ns = fake.namespace("limit");
    fake.deployment(&ns, "web", 0);
    let ctx = instance(fake, &ns, json!({}));
    fake.inject(
        &ns,
        "GET /apis/apps/v1/namespaces",
        status(429, "TooManyRequests", "too many requests").header("Retry-After", "1"),
        1,
    );
    fake.inject(
        &ns,
        "PATCH /apis/apps/v1/namespaces",
        status(429, "TooManyRequests", "too many requests"),
        2,
    );
    let r = resource(&ctx, &decl(&ns, "web", 1));
    let started = tokio::time::Instant::now();
    let run = r
        .start()
        .await
        .expect("a rate-limited start waits, it does not fail");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured ({:?})",
        started.elapsed()
    );
    let requests = fake.requests(&ns);
    let gets = requests.iter().filter(|r| r.starts_with("GET ")).count();
    assert!(gets >= 2, "{requests:#?}");
    assert_eq!(
        fake.writes(&ns).len(),
        3,
        "two 429s then the scale: {requests:#?}"
    );
    assert_eq!(fake.get(&ns, "web").map(|d| d.desired), Some(1));
    r.release(HANG).await.expect("release");
    let _ = exit_code(run.exit).await;
    fake.assert_clean(&ns);
}

#[tokio::test]
async fn a_5xx_burst_shows_in_last_sync_and_keeps_the_state() {
    let fake = kube();
    let ns = fake.namespace("burst");
    fake.deployment(&ns, "web", 1);
    let ctx = instance(fake, &ns, json!({}));
    let r = resource(&ctx, &decl(&ns, "web", 1));
    let run = r.start().await.expect("start");
    until_state(&r, ServiceState::Running).await;
    fake.inject(
        &ns,
        "GET /apis/apps/v1/namespaces",
        status(500, "InternalError", "etcdserver: leader changed"),
        3,
    );
    until_sync_error(&r, "HTTP 500").await;
    let (state, _) = reported(&r);
    assert_eq!(state, Some(ServiceState::Running), "the state is kept");
    assert!(
        r.sync()
            .and_then(|s| s.provider_state)
            .is_some_and(|s| s.contains("ready 1/1")),
        "the provider state is kept"
    );
    until_synced(&r).await;
    r.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
    fake.assert_clean(&ns);
}

#[tokio::test]
async fn unreachable_slow_and_malformed_answers() {
    let fake = kube();
    let ns = fake.namespace("net");
    fake.deployment(&ns, "web", 1);
    // Unreachable: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let gone = InstanceContext {
        config: table(json!({
            "kubeconfig": kubeconfig_file(&format!("http://127.0.0.1:{port}"), &format!("{ns}-gone"))
                .display()
                .to_string(),
            "timeout": "2s",
        })),
        ..instance(fake, &ns, json!({}))
    };
    let r = resource(&gone, &decl(&ns, "web", 1));
    let error = r.start().await.expect_err("unreachable");
    assert!(
        matches!(error, ResourceError::EngineUnavailable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("context `fake`"), "{error}");

    // Slow: no answer within the instance's timeout is a passing error; the next read works.
    let ctx = instance(fake, &ns, json!({"timeout": "300ms"}));
    fake.inject(
        &ns,
        "GET /apis/apps/v1/namespaces",
        Reply::json(200, "{}").delayed(Duration::from_secs(3)),
        1,
    );
    let r = resource(&ctx, &decl(&ns, "web", 1));
    let error = r.status().await.expect_err("slow");
    assert!(!error.is_permanent(), "{error}");
    assert!(error.to_string().contains("no answer within"), "{error}");
    assert_eq!(
        r.status().await.expect("the next read works"),
        Observed::Running
    );

    // Malformed JSON.
    fake.inject(
        &ns,
        "GET /apis/apps/v1/namespaces",
        Reply::json(200, "{\"kind\": \"Deployment\", "),
        1,
    );
    let error = r.status().await.expect_err("malformed");
    assert!(error.to_string().contains("malformed JSON"), "{error}");
    assert_no_secret(&r, &error.to_string(), SECRETS).await;
    fake.assert_clean(&ns);
}

#[tokio::test]
async fn every_bad_key_is_named_at_once() {
    let fake = kube();
    let ns = fake.namespace("keys");
    let p = provider();
    let bad = ResourceDecl {
        name: "web".into(),
        config: table(json!({
            "provider": "k8s",
            "namespace": "Not_A_Namespace",
            "replicas": 0,
            "colour": "blue",
        })),
    };
    let ctx = instance(fake, &ns, json!({"context": "nope", "timeout": "soon"}));
    let problems = p.validate_resource(&ctx, &bad).await;
    let keys: Vec<&str> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    for key in [
        "colour",
        "name",
        "namespace",
        "replicas",
        "timeout",
        "context",
    ] {
        assert!(keys.contains(&key), "{key} not named: {problems:#?}");
    }
    let text = format!("{problems:?}");
    assert!(
        text.contains("no context `nope`") && text.contains("fake, revoked"),
        "{text}"
    );
    let missing = InstanceContext {
        config: table(json!({"kubeconfig": "/nonexistent/kubeconfig"})),
        ..ctx
    };
    let problems = p.validate_resource(&missing, &decl(&ns, "web", 1)).await;
    assert!(
        problems
            .iter()
            .any(|p| p.key.as_deref() == Some("kubeconfig")
                && p.message.contains("/nonexistent/kubeconfig")),
        "{problems:#?}"
    );
    let good = instance(fake, &ns, json!({}));
    assert!(
        p.validate_resource(&good, &decl(&ns, "web", 2))
            .await
            .is_empty()
    );
    // `kinfra providers show kubernetes`: the metadata names every key and command.
    let meta = p.metadata();
    let keys: Vec<&str> = meta.resource_types[0]
        .config
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(keys, ["name", "namespace", "replicas"]);
    assert!(
        meta.resource_types[0]
            .config
            .iter()
            .all(|k| !k.description.is_empty())
    );
    fake.assert_clean(&ns);
}

/// The fake refuses, and records, what the API server would refuse, so `assert_clean` can fail.
#[tokio::test]
async fn the_fake_records_what_the_api_server_would_refuse() {
    let fake = kube();
    let ns = fake.namespace("strict");
    fake.deployment(&ns, "web", 1);
    let client = reqwest::Client::new();
    let url = format!(
        "{}/apis/apps/v1/namespaces/{ns}/deployments/web/scale",
        fake.url
    );
    let send = |content_type: &'static str, body: &'static str| {
        client
            .patch(&url)
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    let answer = send("application/json", r#"{"spec":{"replicas":2}}"#)
        .await
        .expect("an answer");
    assert_eq!(answer.status().as_u16(), 415);
    let answer = send(
        "application/merge-patch+json",
        r#"{"spec":{"replicas":-2}}"#,
    )
    .await
    .expect("an answer");
    assert_eq!(answer.status().as_u16(), 422);
    let answer = send("application/merge-patch+json", r#"{"spec":{"replicas":2}}"#)
        .await
        .expect("an answer");
    assert_eq!(answer.status().as_u16(), 200);
    let scale: Value = answer.json().await.expect("a Scale");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 2);
    let violations = fake.violations(&ns);
    assert_eq!(violations.len(), 2, "{violations:#?}");
    let result = std::panic::catch_unwind(|| fake.assert_clean(&ns));
    assert!(result.is_err(), "assert_clean must fail on a violation");
}

/// `kinfra plan`: one read, then the scale the start would send (nothing at its replicas).
#[tokio::test]
async fn the_planned_start_is_the_scale_it_would_send() {
    let fake = kube();
    let ns = fake.namespace("plan");
    fake.deployment(&ns, "down", 0);
    fake.deployment(&ns, "up", 2);
    let ctx = instance(fake, &ns, json!({}));
    let p = provider();
    let planned = p
        .planned_start(&ctx, &decl(&ns, "down", 2))
        .await
        .expect("a plan")
        .expect("offered");
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert_eq!(planned[0].method, "PATCH");
    assert!(planned[0].url.ends_with(&format!(
        "/namespaces/{ns}/deployments/down/scale?fieldManager=kinfra"
    )));
    assert_eq!(planned[0].body, Some(json!({"spec": {"replicas": 2}})));
    assert!(!format!("{planned:?}").contains(TOKEN));
    let none = p
        .planned_start(&ctx, &decl(&ns, "up", 2))
        .await
        .expect("a plan")
        .expect("offered");
    assert!(none.is_empty(), "{none:?}");
    let error = p
        .planned_start(&ctx, &decl(&ns, "missing", 1))
        .await
        .expect_err("no such Deployment");
    assert!(
        error
            .to_string()
            .contains(&format!("`{ns}/missing` not found")),
        "{error}"
    );
    assert!(
        fake.writes(&ns).is_empty(),
        "a plan sent {:#?}",
        fake.writes(&ns)
    );
    fake.assert_clean(&ns);
}

/// kube's TLS: the API server's certificate is checked against the kubeconfig's
/// `certificate-authority-data`; without it (system roots) the connection is refused.
#[tokio::test]
async fn tls_is_checked_against_the_kubeconfigs_certificate_authority() {
    let fake = kube();
    let ns = fake.namespace("tls");
    fake.deployment(&ns, "web", 1);
    let (url, ca) = tls_front();
    let with_ca = InstanceContext {
        config: table(json!({
            "kubeconfig": kubeconfig_tls_file(url, &ns, Some(ca)).display().to_string(),
            "timeout": "5s",
        })),
        ..instance(fake, &ns, json!({}))
    };
    let r = resource(&with_ca, &decl(&ns, "web", 1));
    assert_eq!(
        r.status().await.expect("status over TLS"),
        Observed::Running
    );
    let run = r.start().await.expect("start over TLS");
    assert!(run.adopted);
    r.release(HANG).await.expect("release");

    let without = InstanceContext {
        config: table(json!({
            "kubeconfig": kubeconfig_tls_file(url, &ns, None).display().to_string(),
            "timeout": "5s",
        })),
        ..with_ca
    };
    let r = resource(&without, &decl(&ns, "web", 1));
    let error = r.status().await.expect_err("an unknown issuer");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
    fake.assert_clean(&ns);
}
