//! The `neon` provider against the stateful Neon fake behind Prism: every exchange is checked
//! against the Neon API v2 spec (`assert_clean` on the test's own project).

use crate::fake_http::Reply;
use crate::harness::{self, HANG, table, until_sync_error, until_synced};
use crate::neon_fake::{PASSWORD, TOKEN, neon};
use kinfra_cloud::neon::{EndpointState, NeonProvider, NeonResource};
use kinfra_core::resource::{Resource, ResourceError};
use kinfra_core::state::ServiceState;
use kinfra_provider::command::validate;
use kinfra_provider::provider::{InstanceContext, Provider, ProviderError, ResourceDecl};
use kinfra_provider::retry::{Backoff, RetryPolicy};
use serde_json::{Value, json};
use std::time::Duration;

/// The instance name every test uses.
const INSTANCE: &str = "neon-test";

fn provider() -> NeonProvider {
    NeonProvider::new().with_retry(RetryPolicy {
        max_attempts: 4,
        max_elapsed: Duration::from_secs(30),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
    })
}

fn instance(base_url: &str, token: &str) -> InstanceContext {
    harness::instance(INSTANCE, base_url, token, json!({}))
}

fn decl(config: Value) -> ResourceDecl {
    harness::decl("db", config)
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {HANG:?}"))
}

/// The endpoint resource of `config` at `base_url`, from a provider that tries each call
/// once.
fn tried_once(base_url: &str, config: Value) -> NeonResource {
    provider()
        .with_retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .endpoint_resource(&instance(base_url, TOKEN), &decl(config))
        .expect("resource")
}

fn requests_matching(project: &str, needle: &str) -> Vec<String> {
    let (_, fake) = neon();
    fake.requests(project)
        .into_iter()
        .filter(|r| r.contains(needle))
        .collect()
}

#[tokio::test]
async fn start_wakes_an_idle_endpoint_through_its_operations_and_applies_suspend_timeout() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("start", "idle");
    let resource = provider()
        .endpoint_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({
                "project_id": project, "endpoint_id": endpoint,
                "suspend_timeout": "10m", "interval": "30s",
            })),
        )
        .expect("resource");
    let run = within("start", resource.start()).await.expect("started");
    assert!(!run.adopted);
    assert_eq!(fake.state(&project, &endpoint), "active");
    fake.with(&project, |p| {
        assert_eq!(p.endpoints[&endpoint].suspend_timeout_seconds, 600);
    });
    let seen = fake.requests(&project);
    let position = |needle: &str| {
        seen.iter()
            .position(|r| r.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {seen:#?}"))
    };
    assert!(position("PATCH") < position("/start"), "{seen:#?}");
    // The start operation was polled until it finished, then the endpoint read active.
    assert!(
        !requests_matching(&project, "/operations/").is_empty(),
        "{seen:#?}"
    );
    let uri = requests_matching(&project, "/connection_uri");
    assert_eq!(uri.len(), 1, "{seen:#?}");
    assert!(uri[0].contains("database_name=neondb") && uri[0].contains("role_name=neondb_owner"));
    let connection = resource.connection();
    assert_eq!(connection.port, Some(5432));
    assert_eq!(connection.field("password").as_deref(), Some(PASSWORD));
    assert!(
        connection
            .field("url")
            .is_some_and(|u| u.contains(&endpoint))
    );
    assert_eq!(connection.field("database").as_deref(), Some("neondb"));
    let sync = resource.sync().expect("synced");
    assert_eq!(sync.provider_state.as_deref(), Some("active"));
    let reported = resource.reported_state().expect("reported");
    assert_eq!(reported.state, ServiceState::Running);
    prism.assert_clean(&project);
}

#[tokio::test]
async fn stop_suspends_and_an_endpoint_gone_idle_outside_ends_the_run_as_sleeping() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("sleep", "active");
    let resource = provider()
        .endpoint_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "project_id": project, "endpoint_id": endpoint, "interval": "200ms" })),
        )
        .expect("resource");
    let run = within("start", resource.start()).await.expect("started");
    assert!(run.adopted, "an active endpoint is adopted, not started");
    assert!(requests_matching(&project, "/start").is_empty());

    // Suspended outside kinfra: the observe loop ends the run, reported as sleeping.
    fake.set_state(&project, &endpoint, "idle");
    let exit = within("the run's end", run.exit).await.expect("an exit");
    assert_eq!(exit.code, Some(0));
    let reported = resource.reported_state().expect("reported");
    assert_eq!(reported.state, ServiceState::Sleeping, "{reported:?}");
    assert!(reported.message.contains("idle"), "{reported:?}");

    // Started again, then stopped: kinfra suspends it and the run ends.
    let run = within("start", resource.start()).await.expect("started");
    assert_eq!(fake.state(&project, &endpoint), "active");
    within("stop", resource.stop(Duration::from_secs(10)))
        .await
        .expect("stopped");
    assert_eq!(fake.state(&project, &endpoint), "idle");
    assert_eq!(requests_matching(&project, "/suspend").len(), 1);
    let exit = within("the run's end", run.exit).await.expect("an exit");
    assert_eq!(exit.code, Some(0));
    // Stopping a sleeping endpoint sends no second suspend.
    within("stop", resource.stop(Duration::from_secs(10)))
        .await
        .expect("stopped");
    assert_eq!(requests_matching(&project, "/suspend").len(), 1);
    prism.assert_clean(&project);
}

#[tokio::test]
async fn endpoint_states_map_as_designed() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("map", "idle");
    let resource = provider()
        .endpoint_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "project_id": project, "endpoint_id": endpoint })),
        )
        .expect("resource");
    let cases = [
        ("init", None, false, EndpointState::Starting, "init"),
        (
            "idle",
            Some("active"),
            false,
            EndpointState::Starting,
            "idle → active",
        ),
        ("active", None, false, EndpointState::Running, "active"),
        (
            "active",
            Some("idle"),
            false,
            EndpointState::Stopping,
            "active → idle",
        ),
        ("idle", None, false, EndpointState::Sleeping, "idle"),
        (
            "idle",
            None,
            true,
            EndpointState::Stopped,
            "idle (disabled)",
        ),
    ];
    for (current, pending, disabled, want, text) in cases {
        fake.with(&project, |p| {
            let e = p.endpoints.get_mut(&endpoint).expect("endpoint");
            e.current_state = current.into();
            e.pending_state = pending.map(str::to_owned);
            e.disabled = disabled;
        });
        within("status", resource.status()).await.expect("status");
        assert_eq!(
            resource.state(),
            Some((want, text.to_owned())),
            "{current} {pending:?} {disabled}"
        );
        assert_eq!(
            resource.sync().and_then(|s| s.provider_state).as_deref(),
            Some(text)
        );
        let reported = resource.reported_state().expect("reported");
        assert_eq!(reported.state, want.service_state());
    }
    prism.assert_clean(&project);
}

#[tokio::test]
async fn a_failed_start_operation_fails_the_start_with_its_reason() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("opfail", "idle");
    fake.with(&project, |p| {
        p.fail_next_start = Some("compute quota exceeded for project".into())
    });
    let resource = provider()
        .endpoint_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "project_id": project, "endpoint_id": endpoint })),
        )
        .expect("resource");
    let error = within("start", resource.start())
        .await
        .expect_err("the operation failed");
    assert!(error.is_permanent(), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("compute quota exceeded for project"),
        "{text}"
    );
    assert!(text.contains("start_compute"), "{text}");
    let reported = resource.reported_state().expect("reported");
    assert_eq!(reported.state, ServiceState::Failed);
    assert!(
        reported.message.contains("compute quota exceeded"),
        "{reported:?}"
    );
    assert_eq!(fake.state(&project, &endpoint), "idle");
    prism.assert_clean(&project);
}

#[tokio::test]
async fn a_refused_token_fails_for_good_naming_the_instance_and_never_the_token() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("badtoken", "idle");
    let wrong = "napi_wrong_token_7f3e";
    let resource = provider()
        .endpoint_resource(
            &instance(&prism.url, wrong),
            &decl(json!({ "project_id": project, "endpoint_id": endpoint })),
        )
        .expect("resource");
    let error = within("start", resource.start())
        .await
        .expect_err("refused");
    assert!(matches!(error, ResourceError::Invalid(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.contains(&format!("`{INSTANCE}`")), "{text}");
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    let sync = resource.sync().expect("a failed sync");
    let last = sync.last_sync.expect("last sync");
    assert!(!last.ok);
    assert!(!last.error.unwrap_or_default().contains(wrong));
    // One attempt: a 401 is not retried.
    assert_eq!(prism.exchanges(&project).len(), 1);
    prism.assert_clean(&project);
}

#[tokio::test]
async fn a_wrong_endpoint_id_fails_naming_it() {
    let (prism, fake) = neon();
    let (project, _, _) = fake.project("wrongid", "idle");
    let resource = provider()
        .endpoint_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "project_id": project, "endpoint_id": "ep-no-such-compute" })),
        )
        .expect("resource");
    let error = within("start", resource.start())
        .await
        .expect_err("not found");
    assert!(error.is_permanent(), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("ep-no-such-compute"), "{text}");
    assert!(text.contains("404"), "{text}");
    prism.assert_clean(&project);
}

#[tokio::test]
async fn a_rate_limit_with_retry_after_is_waited_out_not_failed() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("ratelimit", "idle");
    let limited = Reply::json(
        429,
        r#"{"code":"TOO_MANY_REQUESTS","message":"rate limit exceeded"}"#,
    )
    .header("Retry-After", "1");
    fake.inject(
        &project,
        &format!("POST /projects/{project}/endpoints"),
        limited,
        2,
    );
    let resource = provider()
        .endpoint_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "project_id": project, "endpoint_id": endpoint })),
        )
        .expect("resource");
    within("start", resource.start())
        .await
        .expect("started after the limit");
    assert_eq!(fake.state(&project, &endpoint), "active");
    let posts: Vec<_> = prism
        .exchanges(&project)
        .into_iter()
        .filter(|e| e.method == "POST")
        .collect();
    assert_eq!(
        posts.iter().map(|e| e.status).collect::<Vec<_>>(),
        [429, 429, 200],
        "{posts:?}"
    );
    prism.assert_clean(&project);
}

#[tokio::test]
async fn a_5xx_burst_shows_in_last_sync_and_the_run_goes_on() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("burst", "active");
    let resource = tried_once(
        &prism.url,
        json!({ "project_id": project, "endpoint_id": endpoint, "interval": "100ms" }),
    );
    let mut run = within("start", resource.start()).await.expect("started");
    let failing = Reply::json(500, r#"{"code":"INTERNAL","message":"upstream exploded"}"#);
    fake.inject(
        &project,
        &format!("GET /projects/{project}/endpoints/{endpoint}"),
        failing,
        3,
    );
    until_sync_error(&resource, "").await;
    let last = resource.sync().and_then(|s| s.last_sync).expect("last");
    let error = last.error.expect("an error");
    assert!(error.contains("500"), "{error}");
    // The last known state is kept, and the run goes on through the burst.
    assert_eq!(
        resource.state().map(|(s, _)| s),
        Some(EndpointState::Running)
    );
    until_synced(&resource).await;
    assert!(run.exit.try_recv().is_err(), "the run ended on a 5xx burst");
    prism.assert_clean(&project);
}

#[tokio::test]
async fn malformed_json_fails_the_call_without_a_crash() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("badjson", "idle");
    let garbage = Reply::json(200, r#"{"endpoint": {"id": "#);
    // Prism cannot pass an answer that does not parse: it answers 500 itself, which the
    // harness reports as a violation.
    fake.inject(&project, "GET /projects", garbage.clone(), 1);
    let resource = tried_once(
        &prism.url,
        json!({ "project_id": project, "endpoint_id": endpoint }),
    );
    within("start", resource.start())
        .await
        .expect_err("Prism refuses the malformed answer");
    assert_eq!(prism.violations(&project).len(), 1);
    // So the provider's own handling is seen straight against the fake.
    fake.inject(&project, "GET /projects", garbage, 1);
    let direct = tried_once(
        &prism.fake_url,
        json!({ "project_id": project, "endpoint_id": endpoint }),
    );
    let error = within("start", direct.start())
        .await
        .expect_err("malformed");
    assert!(!error.is_permanent(), "a retry may succeed: {error:?}");
    let text = error.to_string();
    assert!(text.contains("malformed JSON"), "{text}");
    assert!(text.contains(&endpoint), "{text}");
    let last = direct.sync().and_then(|s| s.last_sync).expect("last sync");
    assert!(!last.ok);
    // The next start works: nothing was left half done.
    within("start", direct.start()).await.expect("started");
    assert_eq!(fake.state(&project, &endpoint), "active");
}

#[tokio::test]
async fn a_branch_by_name_finds_its_read_write_endpoint() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("byname", "idle");
    let resource = provider()
        .endpoint_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "project_id": project, "branch": "main", "database": "app", "role": "app_owner" })),
        )
        .expect("resource");
    within("start", resource.start()).await.expect("started");
    assert_eq!(fake.state(&project, &endpoint), "active");
    let uri = requests_matching(&project, "/connection_uri");
    assert!(
        uri[0].contains("database_name=app") && uri[0].contains("role_name=app_owner"),
        "{uri:?}"
    );
    assert_eq!(
        resource.connection().field("user").as_deref(),
        Some("app_owner")
    );
    prism.assert_clean(&project);
}

#[tokio::test]
async fn validate_resource_names_every_key() {
    let (prism, _) = neon();
    let provider = provider();
    let problems = |ctx: InstanceContext, config: Value| {
        let provider = &provider;
        async move {
            provider
                .validate_resource(&ctx, &decl(config))
                .await
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        }
    };
    let found = problems(
        instance(&prism.url, TOKEN),
        json!({ "endpoint_id": "ep-x" }),
    )
    .await;
    assert!(
        found.iter().any(|p| p.starts_with("`project_id`: missing")),
        "{found:?}"
    );
    let found = problems(instance(&prism.url, TOKEN), json!({ "project_id": "p-1" })).await;
    assert!(
        found.iter().any(|p| p.starts_with("`endpoint_id`")),
        "{found:?}"
    );
    let found = problems(
        instance(&prism.url, TOKEN),
        json!({
            "project_id": "p-1", "endpoint_id": "ep-1", "branch": "main",
            "colour": "red", "pooled": "yes", "suspend_timeout": "1s",
        }),
    )
    .await;
    for key in ["branch", "colour", "pooled", "suspend_timeout"] {
        assert!(
            found.iter().any(|p| p.starts_with(&format!("`{key}`"))),
            "{key}: {found:?}"
        );
    }
    let mut no_token = instance(&prism.url, TOKEN);
    no_token.token = None;
    let found = problems(
        no_token,
        json!({ "project_id": "p-1", "endpoint_id": "ep-1" }),
    )
    .await;
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("`token`") && p.contains(INSTANCE)),
        "{found:?}"
    );
    let fine = problems(
        instance(&prism.url, TOKEN),
        json!({ "project_id": "p-1", "endpoint_id": "ep-1", "interval": "10s", "suspend_timeout": "5m" }),
    )
    .await;
    assert!(fine.is_empty(), "{fine:?}");
}

async fn run_command(
    prism_url: &str,
    resource: &ResourceDecl,
    id: &str,
    args: Value,
    dry_run: bool,
) -> Result<kinfra_provider::result::CommandResult, ProviderError> {
    let provider = provider();
    let spec = provider.command(id).expect("command").clone();
    let checked = validate(&spec, &table(args))?;
    within(
        id,
        provider.execute(
            &instance(prism_url, TOKEN),
            resource,
            &spec,
            checked,
            dry_run,
        ),
    )
    .await
}

#[tokio::test]
async fn every_command_dry_runs_without_sending_anything_and_never_shows_the_token() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("dryrun", "idle");
    let by_id = decl(json!({ "project_id": project, "endpoint_id": endpoint }));
    let by_branch = decl(json!({ "project_id": project, "branch": "main" }));
    let cases = [
        (&by_id, "list-branches", json!({}), vec!["GET"]),
        (
            &by_id,
            "create-branch",
            json!({ "name": "dev" }),
            vec!["POST"],
        ),
        (
            &by_id,
            "create-branch",
            json!({ "name": "dev", "parent": "main" }),
            vec!["GET", "POST"],
        ),
        (
            &by_id,
            "delete-branch",
            json!({ "name": "dev" }),
            vec!["GET", "DELETE"],
        ),
        (
            &by_id,
            "restore-branch",
            json!({ "name": "main", "timestamp": "2026-01-01T00:00:00Z" }),
            vec!["GET", "POST"],
        ),
        (
            &by_id,
            "set-suspend-timeout",
            json!({ "seconds": 900 }),
            vec!["PATCH"],
        ),
        (
            &by_branch,
            "set-suspend-timeout",
            json!({ "seconds": 900 }),
            vec!["GET", "GET", "PATCH"],
        ),
    ];
    let provider = provider();
    for command in provider.commands() {
        assert!(command.dry_run, "{} has no dry-run", command.id);
        assert!(
            cases.iter().any(|(_, id, _, _)| *id == command.id),
            "{} is not dry-run here",
            command.id
        );
    }
    for (resource, id, args, methods) in cases {
        let result = run_command(&prism.url, resource, id, args, true)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(result.dry_run && result.success, "{id}: {result:?}");
        let shown: Vec<&str> = result.requests.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(shown, methods, "{id}: {:#?}", result.requests);
        assert!(
            result
                .requests
                .iter()
                .all(|r| r.url.starts_with(&prism.url) && r.url.contains(&project)),
            "{id}: {:#?}",
            result.requests
        );
        let text = serde_json::to_string(&result).expect("json");
        assert!(!text.contains(TOKEN), "{id}: {text}");
        assert!(
            text.contains("****"),
            "{id}: the Authorization header is shown masked"
        );
    }
    let sent = serde_json::to_string(
        &run_command(
            &prism.url,
            &by_id,
            "set-suspend-timeout",
            json!({ "seconds": 900 }),
            true,
        )
        .await
        .expect("dry-run")
        .requests,
    )
    .expect("json");
    assert!(sent.contains("\"suspend_timeout_seconds\":900"), "{sent}");
    assert!(
        fake.requests(&project).is_empty(),
        "a dry-run sent something"
    );
    assert!(prism.exchanges(&project).is_empty());
}

#[tokio::test]
async fn commands_run_against_the_api_and_track_their_operations() {
    let (prism, fake) = neon();
    let (project, endpoint, main) = fake.project("commands", "active");
    let resource = decl(json!({ "project_id": project, "endpoint_id": endpoint }));
    let created = run_command(
        &prism.url,
        &resource,
        "create-branch",
        json!({ "name": "dev", "parent": "main" }),
        false,
    )
    .await
    .expect("created");
    assert_eq!(created.data["branch"]["name"], "dev");
    assert_eq!(created.data["branch"]["parent_id"], json!(main));
    assert!(created.operation.is_some(), "{created:?}");
    // The create_branch operation was followed to its end.
    assert!(
        !requests_matching(&project, "/operations/").is_empty(),
        "{:#?}",
        fake.requests(&project)
    );
    let listed = run_command(&prism.url, &resource, "list-branches", json!({}), false)
        .await
        .expect("listed");
    let names: Vec<&str> = listed.data["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(names, ["main", "dev"]);
    let restored = run_command(
        &prism.url,
        &resource,
        "restore-branch",
        json!({ "name": "dev", "timestamp": "2026-01-01T00:00:00Z" }),
        false,
    )
    .await
    .expect("restored");
    assert!(restored.operation.is_some());
    let restore = requests_matching(&project, "/restore");
    assert!(
        restore[0].contains("\"preserve_under_name\":\"dev-before-restore\""),
        "{restore:?}"
    );
    run_command(
        &prism.url,
        &resource,
        "set-suspend-timeout",
        json!({ "seconds": 900 }),
        false,
    )
    .await
    .expect("set");
    fake.with(&project, |p| {
        assert_eq!(p.endpoints[&endpoint].suspend_timeout_seconds, 900);
    });
    run_command(
        &prism.url,
        &resource,
        "delete-branch",
        json!({ "name": "dev" }),
        false,
    )
    .await
    .expect("deleted");
    fake.with(&project, |p| {
        assert_eq!(
            p.branches
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>(),
            ["main"]
        );
    });
    // A branch that is not there is named; the token is not.
    let error = run_command(
        &prism.url,
        &resource,
        "delete-branch",
        json!({ "name": "ghost" }),
        false,
    )
    .await
    .expect_err("no such branch")
    .to_string();
    assert!(error.contains("ghost"), "{error}");
    assert!(!error.contains(TOKEN), "{error}");
    // Out of range parameters never reach the API.
    let refused = run_command(
        &prism.url,
        &resource,
        "set-suspend-timeout",
        json!({ "seconds": 9_999_999 }),
        false,
    )
    .await
    .expect_err("out of range")
    .to_string();
    assert!(refused.contains("seconds"), "{refused}");
    prism.assert_clean(&project);
}

#[tokio::test]
async fn secrets_stay_out_of_logs_errors_and_sync() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("secrets", "idle");
    let resource = tried_once(
        &prism.url,
        json!({ "project_id": project, "endpoint_id": endpoint, "interval": "100ms" }),
    );
    within("start", resource.start()).await.expect("started");
    let url = resource.connection().field("url").expect("url");
    // An error answer that echoes the secrets back.
    let echo = Reply::json(
        500,
        &json!({ "code": "X", "message": format!("bad {TOKEN} {url} {PASSWORD}") }).to_string(),
    );
    fake.inject(
        &project,
        &format!("GET /projects/{project}/endpoints/{endpoint}"),
        echo,
        1,
    );
    until_sync_error(&resource, "").await;
    let mut shown = format!("{:?}", resource.sync());
    let logs = within("logs", resource.logs(1000)).await.expect("logs");
    for line in logs {
        shown.push_str(&line.text);
        shown.push('\n');
    }
    shown.push_str(&format!("{:?} {:?}", resource.reported_state(), resource));
    for secret in [TOKEN, PASSWORD, url.as_str()] {
        assert!(!shown.contains(secret), "`{secret}` shown in:\n{shown}");
    }
    assert!(shown.contains("****"), "{shown}");
    prism.assert_clean(&project);
}

#[tokio::test]
async fn an_unreachable_api_is_engine_unavailable_for_this_resource() {
    // A port nothing listens on (bound, then closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let resource = tried_once(
        &format!("http://{closed}"),
        json!({ "project_id": "p-gone", "endpoint_id": "ep-gone" }),
    );
    let error = within("start", resource.start())
        .await
        .expect_err("unreachable");
    assert!(
        matches!(error, ResourceError::EngineUnavailable { .. }),
        "{error:?}"
    );
    assert!(error.is_permanent());
    let text = error.to_string();
    assert!(text.contains(&format!("`{INSTANCE}`")), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
}

#[tokio::test]
async fn a_slow_api_times_out_naming_the_call() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("slow", "idle");
    let slow = Reply::json(200, "{}").delayed(Duration::from_secs(5));
    fake.inject(&project, "GET /projects", slow, 1);
    let resource = NeonProvider::with_http_config(kinfra_provider::http::HttpConfig {
        request_timeout: Duration::from_millis(500),
        ..kinfra_provider::http::HttpConfig::default()
    })
    .with_retry(RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    })
    .endpoint_resource(
        &instance(&prism.url, TOKEN),
        &decl(json!({ "project_id": project, "endpoint_id": endpoint })),
    )
    .expect("resource");
    let error = within("start", resource.start())
        .await
        .expect_err("timed out");
    assert!(!error.is_permanent(), "a timeout may pass: {error:?}");
    let text = error.to_string();
    assert!(text.contains("no answer within"), "{text}");
    assert!(text.contains(&endpoint), "{text}");
}
