//! The `supabase` provider against the stateful fake behind Prism (the Management API's own
//! spec): restore and pause followed to their end, DESIGN's state mapping, health naming the
//! unhealthy services, connection facts, commands and their dry-runs, and the faults (401,
//! 404, 429, 5xx, malformed JSON), with no secret in any error, log line or dry-run.

use crate::fake_http::Reply;
use crate::harness::{
    self, HANG, assert_no_secret, assert_slow_start_times_out_then_runs, exit_code, reported,
    table, until, until_healthy, until_state, until_sync_error, until_synced,
};
use crate::supabase_fake::{SupabaseFake, TOKEN, supabase};
use kinfra_cloud::supabase::{SupabaseProvider, SupabaseResource};
use kinfra_core::resource::{Resource, ResourceError};
use kinfra_core::state::{Health, ServiceState};
use kinfra_provider::command::validate;
use kinfra_provider::provider::{InstanceContext, Provider, ResourceDecl};
use serde_json::{Map, Value, json};
use std::time::Duration;

const DB_PASSWORD: &str = "sb-db-pw-Zq81x";
/// What no output may show.
const SECRETS: &[(&str, &str)] = &[("the token", TOKEN), ("the password", DB_PASSWORD)];

fn instance(base: &str, token: &str) -> InstanceContext {
    harness::instance("supa", base, token, json!({}))
}

fn decl(project_ref: &str) -> ResourceDecl {
    harness::decl(
        "db",
        json!({
            "provider": "supa",
            "project_ref": project_ref,
            "db_password": DB_PASSWORD,
            "interval": "100ms",
        }),
    )
}

fn resource(base: &str, project_ref: &str) -> SupabaseResource {
    SupabaseProvider::new()
        .project_resource(&instance(base, TOKEN), &decl(project_ref))
        .expect("a valid resource")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_project_is_restored_runs_healthy_gives_its_urls_and_pauses() {
    let (prism, fake) = supabase();
    let r = fake.project("restore", "INACTIVE");
    let res = resource(&prism.url, &r);
    let run = res.start().await.expect("start");
    assert!(!run.adopted, "a paused project is resumed, not adopted");
    assert_eq!(fake.count(&r, "POST /v1/projects"), 1, "one restore sent");
    assert!(fake.requests(&r)[1].contains(&format!("POST /v1/projects/{r}/restore")));
    // COMING_UP: starting, with the restore's progress in the message.
    until("COMING_UP shows as starting", || async {
        let (state, message) = reported(&res);
        state == Some(ServiceState::Starting)
            && message.contains("COMING_UP")
            && message.contains("restore requested")
    })
    .await;
    assert_eq!(res.health().await.expect("health"), Health::Unknown);
    // ACTIVE_HEALTHY with every service healthy: running and healthy.
    until("ACTIVE_HEALTHY shows as running and healthy", || async {
        reported(&res) == (Some(ServiceState::Running), "ACTIVE_HEALTHY".into())
            && res.health().await.ok() == Some(Health::Healthy)
    })
    .await;
    assert!(
        fake.requests(&r).iter().any(|l| l.contains(&format!(
            "GET /v1/projects/{r}/health?services=db&services=auth&services=rest&services=storage"
        ))),
        "{:?}",
        fake.requests(&r)
    );
    // Connection facts: the direct URL from database.host, the pooler's with the password.
    until("the pooler's URL is known", || async {
        res.connection().fields.contains_key("pooler_url")
    })
    .await;
    let conn = res.connection();
    assert_eq!(conn.host, format!("db.{r}.supabase.co"));
    assert_eq!(
        conn.field("url").as_deref(),
        Some(
            format!("postgresql://postgres:{DB_PASSWORD}@db.{r}.supabase.co:5432/postgres")
                .as_str()
        )
    );
    assert_eq!(
        conn.field("pooler_url").as_deref(),
        Some(
            format!(
                "postgresql://postgres.{r}:{DB_PASSWORD}@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
            )
            .as_str()
        )
    );
    assert_eq!(conn.field("password").as_deref(), Some(DB_PASSWORD));
    let sync = res.sync().expect("sync facts");
    assert_eq!(sync.provider_state.as_deref(), Some("ACTIVE_HEALTHY"));
    assert!(sync.last_sync.is_some_and(|s| s.ok));
    // Stop pauses: PAUSING → INACTIVE, then the run ends.
    res.stop(HANG).await.expect("stop");
    assert_eq!(fake.status(&r), "INACTIVE");
    assert_eq!(fake.count(&r, "/pause"), 1, "one pause sent");
    assert_eq!(exit_code(run.exit).await, Some(0));
    assert_eq!(res.provider_status().as_deref(), Some("INACTIVE"));
    assert_eq!(reported(&res).0, Some(ServiceState::Stopped));
    assert_no_secret(&res, "", SECRETS).await;
    prism.assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_ends_in_restore_failed_fails_the_run_with_the_reason() {
    let (prism, fake) = supabase();
    let r = fake.project("failedrestore", "INACTIVE");
    fake.with(&r, |p| p.fail_next_restore = true);
    let res = resource(&prism.url, &r);
    let run = res.start().await.expect("start");
    assert_eq!(
        exit_code(run.exit).await,
        Some(1),
        "a failed restore ends the run"
    );
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed));
    assert!(message.contains("RESTORE_FAILED"), "{message}");
    assert!(message.contains(&r), "names the project: {message}");
    assert!(
        res.exit_reason()
            .is_some_and(|m| m.contains("RESTORE_FAILED")),
        "{:?}",
        res.exit_reason()
    );
    // Stopping a failed project sends no pause (nothing runs to pause).
    res.stop(HANG).await.expect("stop");
    assert_eq!(fake.count(&r, "/pause"), 0, "{:?}", fake.requests(&r));
    assert_no_secret(&res, "", SECRETS).await;
    prism.assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_the_unhealthy_services_and_active_unhealthy_is_unhealthy() {
    let (prism, fake) = supabase();
    let r = fake.project("health", "ACTIVE_HEALTHY");
    fake.with(&r, |p| {
        p.unhealthy = vec![("auth".into(), "GoTrue is down".into())];
    });
    let res = resource(&prism.url, &r);
    let run = res.start().await.expect("start");
    assert!(run.adopted, "an active project is adopted");
    assert_eq!(
        fake.count(&r, "POST"),
        0,
        "nothing sent to an active project"
    );
    until("the unhealthy service is named", || async {
        let (state, message) = reported(&res);
        state == Some(ServiceState::Running)
            && message.contains("unhealthy: auth (GoTrue is down)")
            && res.health().await.ok() == Some(Health::Unhealthy)
    })
    .await;
    fake.with(&r, |p| p.unhealthy.clear());
    until_healthy(&res).await;
    fake.set_status(&r, "ACTIVE_UNHEALTHY");
    until("ACTIVE_UNHEALTHY is running and unhealthy", || async {
        reported(&res).0 == Some(ServiceState::Running)
            && res.health().await.ok() == Some(Health::Unhealthy)
    })
    .await;
    // UPGRADING is maintenance; an unknown status keeps the last state, health unknown.
    fake.set_status(&r, "UPGRADING");
    until_state(&res, ServiceState::Maintenance).await;
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
    prism.assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_status_keeps_the_last_state_with_a_warning() {
    let (prism, fake) = supabase();
    let r = fake.project("unknown", "ACTIVE_HEALTHY");
    let res = resource(&prism.url, &r);
    let run = res.start().await.expect("start");
    until_healthy(&res).await;
    fake.set_status(&r, "UNKNOWN");
    until("the unknown status is seen", || async {
        res.provider_status().as_deref() == Some("UNKNOWN")
    })
    .await;
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Running), "the last state is kept");
    assert!(message.contains("unknown status UNKNOWN"), "{message}");
    assert_eq!(res.health().await.expect("health"), Health::Unknown);
    let logs = res.logs(100).await.expect("logs");
    assert!(
        logs.iter()
            .any(|l| l.text.contains("warning: unknown project status `UNKNOWN`")),
        "{logs:?}"
    );
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
    prism.assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_paused_outside_kinfra_ends_the_run_as_stopped() {
    let (prism, fake) = supabase();
    let r = fake.project("outside", "ACTIVE_HEALTHY");
    let res = resource(&prism.url, &r);
    let run = res.start().await.expect("start");
    until_healthy(&res).await;
    fake.set_status(&r, "PAUSING");
    until_state(&res, ServiceState::Stopping).await;
    fake.set_status(&r, "INACTIVE");
    assert_eq!(exit_code(run.exit).await, Some(0));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Stopped));
    assert!(message.contains("paused outside kinfra"), "{message}");
    assert_eq!(fake.count(&r, "POST"), 0, "kinfra sent nothing");
    prism.assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_and_an_unknown_ref_fail_permanently_naming_them() {
    let (prism, fake) = supabase();
    let r = fake.project("tokenfault", "INACTIVE");
    let bad = SupabaseProvider::new()
        .project_resource(&instance(&prism.url, "sbp_wrong_token_91"), &decl(&r))
        .expect("resource");
    let error = bad.start().await.expect_err("a refused token fails");
    assert!(error.is_permanent(), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("`supa`") && text.contains("401"), "{text}");
    assert!(!text.contains("sbp_wrong_token_91"), "{text}");
    assert_eq!(fake.count(&r, "POST"), 0);
    prism.assert_clean(&r);

    // A ref no project has: the fake answers 404, which the spec does not declare for this
    // path (Prism flags the answer); the provider's error names the ref either way.
    let missing = "nosuchprojectrefzzzz";
    let res = resource(&prism.url, missing);
    let error = res.start().await.expect_err("an unknown project fails");
    assert!(
        matches!(error, ResourceError::Invalid(_)),
        "permanent: {error:?}"
    );
    let text = error.to_string();
    assert!(text.contains(missing) && text.contains("404"), "{text}");
    assert_no_secret(&res, &text, SECRETS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_wait_and_server_errors_show_in_last_sync_then_clear() {
    let (prism, fake) = supabase();
    let r = fake.project("faults", "ACTIVE_HEALTHY");
    let res = resource(&prism.url, &r);
    let run = res.start().await.expect("start");
    until_healthy(&res).await;
    // 429 with Retry-After: the loop waits that long; the state stays.
    let before = fake.count(&r, &format!("GET /v1/projects/{r} "));
    fake.inject(
        &r,
        &format!("GET /v1/projects/{r}$"),
        Reply::json(429, r#"{"message":"slow down"}"#).header("Retry-After", "1"),
        1,
    );
    until_sync_error(&res, "429").await;
    let limited_at = std::time::Instant::now();
    let after_limit = fake.count(&r, &format!("GET /v1/projects/{r} "));
    until("observing again after the Retry-After", || async {
        fake.count(&r, &format!("GET /v1/projects/{r} ")) > after_limit
    })
    .await;
    assert!(
        limited_at.elapsed() >= Duration::from_millis(800),
        "the next observe waited for Retry-After"
    );
    assert!(after_limit > before);
    assert_eq!(reported(&res).0, Some(ServiceState::Running));
    // A burst of 500s: last_sync shows the error, the state stays, then it clears.
    fake.inject(
        &r,
        &format!("GET /v1/projects/{r}$"),
        Reply::json(500, r#"{"message":"Failed to retrieve project"}"#),
        3,
    );
    until_sync_error(&res, "HTTP 500").await;
    assert_eq!(reported(&res).0, Some(ServiceState::Running), "kept");
    until_synced(&res).await;
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
    assert_no_secret(&res, "", SECRETS).await;
    prism.assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_sync_error_not_a_crash() {
    // Prism would turn a malformed answer into its own error: this one talks to the fake.
    let (prism, fake) = supabase();
    let r = fake.project("malformed", "ACTIVE_HEALTHY");
    let res = resource(&prism.fake_url, &r);
    let run = res.start().await.expect("start");
    until_healthy(&res).await;
    fake.inject(
        &r,
        &format!("GET /v1/projects/{r}$"),
        Reply::json(200, r#"{"status": "ACTIVE_HEA"#),
        2,
    );
    until_sync_error(&res, "malformed JSON").await;
    assert_eq!(reported(&res).0, Some(ServiceState::Running));
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_a_dry_run_that_sends_nothing_and_shows_no_secret() {
    let (prism, fake) = supabase();
    let r = fake.project("dryrun", "ACTIVE_HEALTHY");
    let provider = SupabaseProvider::new();
    let ctx = instance(&prism.url, TOKEN);
    let d = decl(&r);
    let ids: Vec<&str> = provider.commands().iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "list-branches",
            "create-branch",
            "delete-branch",
            "cancel-restore"
        ]
    );
    let cases = [
        (
            "list-branches",
            json!({}),
            "GET",
            format!("/v1/projects/{r}/branches"),
            None,
        ),
        (
            "create-branch",
            json!({"name": "preview"}),
            "POST",
            format!("/v1/projects/{r}/branches"),
            Some(json!({"branch_name": "preview"})),
        ),
        (
            "delete-branch",
            json!({"id": "00000000-0000-4000-8000-000000000001"}),
            "DELETE",
            "/v1/branches/00000000-0000-4000-8000-000000000001".to_owned(),
            None,
        ),
        (
            "cancel-restore",
            json!({}),
            "POST",
            format!("/v1/projects/{r}/restore/cancel"),
            None,
        ),
    ];
    for (id, given, method, path, body) in cases {
        let spec = provider.command(id).expect("command");
        assert!(spec.dry_run, "{id} supports a dry-run");
        assert_eq!(spec.confirm, id == "delete-branch", "{id}");
        let checked = validate(spec, &table(given)).expect("valid params");
        let result = provider
            .execute(&ctx, &d, spec, checked, true)
            .await
            .expect("dry-run");
        assert!(result.dry_run && result.success, "{id}: {result:?}");
        assert_eq!(result.requests.len(), 1, "{id}");
        let req = &result.requests[0];
        assert_eq!(req.method, method, "{id}");
        assert_eq!(req.url, format!("{}{path}", prism.url), "{id}");
        assert_eq!(req.body, body, "{id}");
        let shown = serde_json::to_string(&result).expect("json");
        assert!(!shown.contains(TOKEN), "{id}: {shown}");
        assert!(!shown.contains(DB_PASSWORD), "{id}: {shown}");
        assert!(
            req.headers
                .iter()
                .any(|(k, v)| k == "Authorization" && v == "****"),
            "{id}: {:?}",
            req.headers
        );
    }
    assert!(fake.requests(&r).is_empty(), "{:?}", fake.requests(&r));
    // Missing parameters are named before anything is sent.
    let spec = provider.command("create-branch").expect("command");
    let problems = validate(spec, &Map::new()).expect_err("name is required");
    assert!(problems.to_string().contains("name"), "{problems}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_create_list_and_delete_branches_and_cancel_a_restore() {
    let (prism, fake) = supabase();
    let r = fake.project("commands", "INACTIVE");
    let provider = SupabaseProvider::new();
    let ctx = instance(&prism.url, TOKEN);
    let d = decl(&r);
    let run = |id: &'static str, given: Value| {
        let provider = &provider;
        let ctx = &ctx;
        let d = &d;
        async move {
            let spec = provider.command(id).expect("command");
            let checked = validate(spec, &table(given)).expect("valid");
            provider
                .execute(ctx, d, spec, checked, false)
                .await
                .unwrap_or_else(|e| panic!("{id}: {e}"))
        }
    };
    let created = run("create-branch", json!({"name": "preview"})).await;
    assert_eq!(created.data["name"], "preview", "{created:?}");
    let id = created.data["id"].as_str().expect("branch id").to_owned();
    let listed = run("list-branches", json!({})).await;
    assert_eq!(listed.data[0]["id"], id.as_str(), "{listed:?}");
    let deleted = run("delete-branch", json!({ "id": id })).await;
    assert_eq!(deleted.data["message"], "ok");
    let listed = run("list-branches", json!({})).await;
    assert_eq!(listed.data, json!([]));
    // cancel-restore: a restore under way goes back to INACTIVE.
    fake.with(&r, |p| p.operation_time = Duration::from_secs(60));
    let res = resource(&prism.url, &r);
    let started = res.start().await.expect("start");
    assert_eq!(fake.status(&r), "COMING_UP");
    run("cancel-restore", json!({})).await;
    assert_eq!(fake.status(&r), "INACTIVE");
    drop(started);
    prism.assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_problems_are_named_by_key() {
    let provider = SupabaseProvider::new();
    let Value::Object(config) = json!({
        "provider": "supa",
        "project_ref": "Not-A-Ref",
        "colour": "red",
        "interval": "soon",
    }) else {
        unreachable!()
    };
    let d = ResourceDecl {
        name: "db".into(),
        config,
    };
    let ctx = InstanceContext {
        instance: "supa".into(),
        ..InstanceContext::default()
    };
    let problems: Vec<String> = provider
        .validate_resource(&ctx, &d)
        .await
        .iter()
        .map(|p| p.to_string())
        .collect();
    let text = problems.join("\n");
    for key in ["`colour`", "`project_ref`", "`interval`", "`token`"] {
        assert!(text.contains(key), "{key} not named:\n{text}");
    }
    assert!(text.contains("20 lower-case letters"), "{text}");
    let Value::Object(config) = json!({ "provider": "supa" }) else {
        unreachable!()
    };
    let missing = provider
        .validate_resource(
            &instance("http://127.0.0.1:9", TOKEN),
            &ResourceDecl {
                name: "db".into(),
                config,
            },
        )
        .await;
    assert_eq!(
        missing.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        ["`project_ref`: missing (required)"]
    );
}

/// The fake itself: refs are valid for the spec and the token check holds.
#[tokio::test]
async fn the_fake_hands_out_valid_refs() {
    let (_, fake) = supabase();
    let r = fake.project("x", "INACTIVE");
    assert!(kinfra_cloud::supabase::valid_ref(&r), "{r}");
    let _: &SupabaseFake = fake;
}

/// Why the health query repeats `services=`: the spec's `services` is an exploded array, so
/// the comma form (`services=db,auth`) leaves it; the harness catches that.
#[tokio::test]
async fn the_health_query_s_comma_form_leaves_the_spec() {
    let (prism, fake) = supabase();
    let r = fake.project("commaform", "ACTIVE_HEALTHY");
    let get = |query: String| {
        let url = format!("{}/v1/projects/{r}/health?{query}", prism.url);
        async move {
            reqwest::Client::new()
                .get(url)
                .header("Authorization", format!("Bearer {TOKEN}"))
                .send()
                .await
                .expect("the relay answers")
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("services=db&services=auth".into()).await, 200);
    assert!(
        prism.violations(&r).is_empty(),
        "{:?}",
        prism.violations(&r)
    );
    get("services=db,auth".into()).await;
    assert_eq!(prism.violations(&r).len(), 1, "{:?}", prism.exchanges(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_engine_unavailable_and_a_slow_one_times_out() {
    // Nothing listens on port 1.
    let res = resource("http://127.0.0.1:1", "unreachableprojectxx");
    let error = res.start().await.expect_err("no API");
    assert!(
        matches!(error, ResourceError::EngineUnavailable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("`supa`"), "{error}");

    let (prism, fake) = supabase();
    let r = fake.project("slow", "ACTIVE_HEALTHY");
    let provider = SupabaseProvider::with_http_config(kinfra_provider::http::HttpConfig {
        request_timeout: Duration::from_millis(300),
        ..kinfra_provider::http::HttpConfig::default()
    });
    let res = provider
        .project_resource(&instance(&prism.url, TOKEN), &decl(&r))
        .expect("resource");
    fake.inject(
        &r,
        &format!("GET /v1/projects/{r}$"),
        crate::fake_http::Reply::json(200, "{}").delayed(Duration::from_secs(3)),
        4,
    );
    // Every attempt of the start's read (four by the provider's retry policy) is too slow.
    assert_slow_start_times_out_then_runs(&res).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_start_waits_for_retry_after_instead_of_failing() {
    let (prism, fake) = supabase();
    let r = fake.project("limitedstart", "INACTIVE");
    fake.inject(
        &r,
        &format!("GET /v1/projects/{r}$"),
        Reply::json(429, r#"{"message":"Rate limit exceeded"}"#).header("Retry-After", "1"),
        1,
    );
    let res = resource(&prism.url, &r);
    let run = res.start().await.expect("the start waits and goes on");
    assert_eq!(fake.count(&r, &format!("GET /v1/projects/{r} ")), 2);
    assert_eq!(fake.count(&r, "/restore"), 1);
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run.exit).await, Some(0));
    prism.assert_clean(&r);
}

/// A restore that outlasts the resource's `operation_timeout` fails the run naming the
/// timeout; the check must not hang the observe loop (it once held the view's lock while
/// taking it again: the run then never ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_past_its_timeout_fails_the_run_naming_it() {
    let (prism, fake) = supabase();
    let r = fake.project("slowrestore", "INACTIVE");
    fake.with(&r, |p| p.operation_time = Duration::from_secs(3600));
    let decl = harness::decl(
        "db",
        json!({
            "provider": "supa",
            "project_ref": r,
            "db_password": DB_PASSWORD,
            "interval": "100ms",
            "operation_timeout": "1s",
        }),
    );
    let res = SupabaseProvider::new()
        .project_resource(&instance(&prism.url, TOKEN), &decl)
        .expect("a valid resource");
    let run = res.start().await.expect("start");
    let exit = tokio::time::timeout(HANG, run.exit)
        .await
        .expect("the run ends (the timeout check did not hang)")
        .expect("an exit");
    assert_eq!(exit.code, Some(1));
    let (_, message) = reported(&res);
    assert!(message.contains("did not finish within"), "{message}");
    prism.assert_clean(&r);
}
