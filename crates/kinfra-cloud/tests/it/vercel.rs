//! The `vercel` provider against the stateful fake behind Prism (Vercel's own spec, trimmed to
//! the operations it calls), request bodies checked by Ajv against their operation's schema
//! (Prism does not): the production deployment's readyState mapped as DESIGN says, unpause at
//! start and pause at stop, outside changes, the deployment URL as a connection fact, build
//! events and runtime logs streamed into the run's output, `teamId` on every call, commands
//! and their dry-runs, and the faults (401, 403, 404, 429 with and without Retry-After, 5xx,
//! unreachable, slow, malformed JSON), with no token in any error, log line or dry-run.

use crate::fake_http::Reply;
use crate::harness::{
    self, HANG, assert_no_secret, assert_slow_start_times_out_then_runs, exit_code, quick_retry,
    reported, table, until, until_healthy, until_state, until_sync_error, until_synced,
};
use crate::vercel_fake::{StreamServer, TOKEN, VercelFake, vercel};
use kinfra_cloud::vercel::{VercelProvider, VercelResource};
use kinfra_core::resource::{OutputLine, Resource, ResourceError, Run};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::LogStream;
use kinfra_provider::command::validate;
use kinfra_provider::http::HttpConfig;
use kinfra_provider::provider::{InstanceContext, Provider, ProviderError, ResourceDecl};
use kinfra_provider::retry::{Backoff, RetryPolicy};
use serde_json::{Map, Value, json};
use std::time::Duration;

const TEAM: &str = "team_kinfra_tests";

fn instance(base: &str, token: &str, team: Option<&str>) -> InstanceContext {
    let config = match team {
        Some(team) => json!({ "team_id": team }),
        None => json!({}),
    };
    harness::instance("vc", base, token, config)
}

fn decl(project: &str) -> ResourceDecl {
    harness::decl(
        "web",
        json!({
            "provider": "vc",
            "project_id": project,
            "interval": "100ms",
        }),
    )
}

/// A provider whose retries are quick (tests do not wait a minute for a 5xx burst).
fn provider() -> VercelProvider {
    VercelProvider::new().with_retry(quick_retry(3))
}

fn resource(base: &str, project: &str, team: Option<&str>) -> VercelResource {
    provider()
        .project_resource(&instance(base, TOKEN, team), &decl(project))
        .expect("a valid resource")
}

/// Reads a run's output into a shared list as it comes.
fn collect(
    run: Run,
) -> (
    tokio::sync::oneshot::Receiver<kinfra_core::event::ExitInfo>,
    std::sync::Arc<std::sync::Mutex<Vec<OutputLine>>>,
) {
    let Run {
        mut output, exit, ..
    } = run;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        while let Some(line) = output.recv().await {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
    (exit, lines)
}

fn has_line(lines: &std::sync::Mutex<Vec<OutputLine>>, stream: LogStream, text: &str) -> bool {
    lines
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|l| l.stream == stream && l.text.contains(text))
}

/// Every exchange of project `id` passed Prism and every body its schema.
fn assert_clean(prism: &crate::prism::Prism, fake: &VercelFake, id: &str) {
    prism.assert_clean(id);
    assert_eq!(
        fake.body_errors(id),
        Vec::<String>::new(),
        "bodies left the spec"
    );
}

/// The same, but for the fault tests: Vercel's spec declares neither 429 nor 5xx for the
/// reads they hit, so Prism warns that those injected statuses are undeclared. Exactly those
/// warnings, on exactly `statuses`, are let through; anything else fails.
fn assert_clean_but_undeclared(
    prism: &crate::prism::Prism,
    fake: &VercelFake,
    id: &str,
    statuses: &[u16],
) {
    assert!(!prism.exchanges(id).is_empty(), "no exchange of {id}");
    let bad: Vec<String> = prism
        .violations(id)
        .into_iter()
        .filter(|e| {
            let undeclared = e.violation.as_deref().is_some_and(|v| {
                v.contains("Unable to match the returned status code")
                    && !v.contains("\"severity\":\"Error\"")
            });
            !(undeclared && statuses.contains(&e.status))
        })
        .map(|e| {
            format!(
                "{} {} → {}: {:?}",
                e.method, e.target, e.status, e.violation
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "exchanges left the spec:\n{}",
        bad.join("\n")
    );
    assert_eq!(
        fake.body_errors(id),
        Vec::<String>::new(),
        "bodies left the spec"
    );
}

async fn execute(
    provider: &VercelProvider,
    ctx: &InstanceContext,
    project: &str,
    command: &str,
    given: Value,
    dry_run: bool,
) -> Result<kinfra_provider::result::CommandResult, ProviderError> {
    let spec = provider.command(command).expect("a command").clone();
    let checked = validate(&spec, &table(given)).expect("valid params");
    provider
        .execute(ctx, &decl(project), &spec, checked, dry_run)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_project_runs_healthy_gives_its_url_and_pauses_at_stop() {
    let (prism, fake) = vercel();
    let (p, d) = fake.project("ready", None, false, Some("READY"));
    let res = resource(&prism.url, &p, None);
    let run = res.start().await.expect("start");
    assert!(run.adopted, "a READY project is taken as it is");
    assert_eq!(
        fake.count(&p, "POST"),
        0,
        "nothing sent: {:?}",
        fake.requests(&p)
    );
    let (exit, _lines) = collect(run);
    until("READY shows as running and healthy", || async {
        reported(&res).0 == Some(ServiceState::Running)
            && res.health().await.ok() == Some(Health::Healthy)
    })
    .await;
    let (_, message) = reported(&res);
    assert!(message.starts_with("READY https://"), "{message}");
    let facts = res.sync().expect("synced");
    assert_eq!(facts.provider_state.as_deref(), Some("READY"));
    // The latest production deployment, read by the project's id.
    assert!(
        fake.requests(&p).iter().any(|l| l.contains(&format!(
            "GET /v6/deployments?projectId={p}&target=production&limit=1"
        ))),
        "{:?}",
        fake.requests(&p)
    );
    let conn = res.connection();
    let url = fake.deployments(&p)[0].url.clone();
    assert_eq!(conn.host, url);
    assert_eq!(conn.port, Some(443));
    assert_eq!(conn.field("url"), Some(format!("https://{url}")));
    assert_eq!(conn.field("deployment_id").as_deref(), Some(d.as_str()));
    // Stop pauses the project and ends the run as stopped.
    res.stop(HANG).await.expect("stop");
    assert_eq!(exit_code(exit).await, Some(0));
    assert!(fake.with(&p, |x| x.paused), "paused");
    assert_eq!(fake.count(&p, &format!("POST /v1/projects/{p}/pause")), 1);
    assert_eq!(
        reported(&res),
        (Some(ServiceState::Stopped), "paused".into())
    );
    assert_eq!(res.provider_status().as_deref(), Some("paused"));
    assert_no_secret(&res, "", &[("the token", TOKEN)]).await;
    assert_clean(prism, fake, &p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_project_is_unpaused_and_a_deploy_streams_its_build_then_runtime_logs() {
    let (prism, fake) = vercel();
    let (p, first) = fake.project("deploy", None, true, Some("READY"));
    let res = resource(&prism.url, &p, None);
    let run = res.start().await.expect("start");
    assert!(!run.adopted, "a paused project is resumed, not adopted");
    assert_eq!(fake.count(&p, &format!("POST /v1/projects/{p}/unpause")), 1);
    assert!(!fake.with(&p, |x| x.paused));
    let (exit, lines) = collect(run);
    until_state(&res, ServiceState::Running).await;
    // What the start said opens the run's output.
    until("the unpause in the output", || async {
        has_line(&lines, LogStream::System, "unpause: POST")
    })
    .await;
    // The first deployment's build events were streamed into the run's output.
    until("the first build's events", || async {
        has_line(
            &lines,
            LogStream::Stdout,
            "build: Cloning github.com/acme/site",
        )
    })
    .await;

    // A deploy: QUEUED → BUILDING → READY shows as starting, then running on the new URL.
    let provider = provider();
    let ctx = instance(&prism.url, TOKEN, None);
    let result = execute(
        &provider,
        &ctx,
        &p,
        "deploy",
        json!({"git_ref": "release"}),
        false,
    )
    .await
    .expect("deploy");
    let new = result.operation.clone().expect("the deployment's id");
    assert_ne!(new, first);
    assert_eq!(result.operation_state.as_deref(), Some("QUEUED"));
    let post = fake
        .requests(&p)
        .into_iter()
        .find(|l| l.starts_with("POST /v13/deployments"))
        .expect("the deploy's POST");
    assert!(
        post.contains(r#""ref":"release""#) && post.contains(r#""repoId":4242"#),
        "{post}"
    );
    until("the build shows as starting", || async {
        let (state, message) = reported(&res);
        state == Some(ServiceState::Starting) && message.contains(&new)
    })
    .await;
    until("the new deployment READY", || async {
        reported(&res).0 == Some(ServiceState::Running)
            && res.connection().field("deployment_id").as_deref() == Some(new.as_str())
    })
    .await;
    until("the build's events, streamed", || async {
        has_line(
            &lines,
            LogStream::Stdout,
            "build: Cloning (github at release)",
        ) && has_line(
            &lines,
            LogStream::Stdout,
            "build: Running \"npm run build\"",
        ) && has_line(&lines, LogStream::Stdout, "build: Build Completed")
    })
    .await;
    // Runtime logs of the READY deployment: each row once, errors on stderr.
    fake.add_row(&p, &new, "info", "hello from a function");
    fake.add_row(&p, &new, "error", "function crashed");
    until("runtime logs in the output", || async {
        has_line(
            &lines,
            LogStream::Stdout,
            "runtime: GET /api/hello 200: hello from a function",
        ) && has_line(
            &lines,
            LogStream::Stderr,
            "runtime: GET /api/hello 200: function crashed",
        )
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let repeats = lines
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|l| l.text.contains("hello from a function"))
        .count();
    assert_eq!(repeats, 1, "a row shows once");
    // The same lines are in the resource's log.
    let logs = res.logs(1000).await.expect("logs");
    assert!(logs.iter().any(|l| l.text.contains("function crashed")));
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(exit).await, Some(0));
    assert!(
        !fake.with(&p, |x| x.paused),
        "release leaves the project as it is"
    );
    assert_no_secret(&res, "", &[("the token", TOKEN)]).await;
    assert_clean(prism, fake, &p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_fails_the_run_with_the_error_message() {
    let (prism, fake) = vercel();
    let (p, _) = fake.project("broken", None, false, Some("READY"));
    let res = resource(&prism.url, &p, None);
    let (exit, lines) = collect(res.start().await.expect("start"));
    until_state(&res, ServiceState::Running).await;
    fake.with(&p, |x| x.fail_next_build = true);
    let ctx = instance(&prism.url, TOKEN, None);
    execute(&provider(), &ctx, &p, "deploy", json!({}), false)
        .await
        .expect("deploy");
    assert_eq!(
        exit_code(exit).await,
        Some(1),
        "ERROR ends the run as failed"
    );
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed));
    assert!(
        message.starts_with("ERROR: production deployment"),
        "{message}"
    );
    assert!(
        message.contains("exited with 1"),
        "the errorMessage: {message}"
    );
    assert_eq!(res.exit_reason().as_deref(), Some(message.as_str()));
    until(
        "the failure and the failed build's last events in the output",
        || async {
            has_line(&lines, LogStream::Stderr, "ERROR: production deployment")
                && has_line(
                    &lines,
                    LogStream::Stderr,
                    "build: Error: Command \"npm run build\" exited with 1",
                )
        },
    )
    .await;
    // Stopping a failed project sends no pause.
    res.stop(HANG).await.expect("stop");
    assert_eq!(fake.count(&p, "/pause"), 0);
    assert_clean(prism, fake, &p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_changes_show_paused_canceled_and_deleted() {
    let (prism, fake) = vercel();
    // Paused outside kinfra: the run ends as stopped, nothing is sent.
    let (p, d) = fake.project("outside", None, false, Some("READY"));
    let res = resource(&prism.url, &p, None);
    let (exit, _) = collect(res.start().await.expect("start"));
    until_state(&res, ServiceState::Running).await;
    fake.set_paused(&p, true);
    assert_eq!(exit_code(exit).await, Some(0));
    assert_eq!(
        reported(&res),
        (Some(ServiceState::Stopped), "paused outside kinfra".into())
    );
    assert_eq!(fake.count(&p, "POST"), 0, "{:?}", fake.requests(&p));
    // Unpaused outside: status says it runs again (the supervisor takes it up).
    fake.set_paused(&p, false);
    assert_eq!(
        res.status().await.expect("status"),
        kinfra_core::resource::Observed::Running
    );
    // CANCELED: stopped.
    let (exit, _) = collect(res.start().await.expect("start again"));
    fake.set_state(&p, &d, "CANCELED");
    assert_eq!(exit_code(exit).await, Some(0));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Stopped), "{message}");
    assert!(message.contains("canceled"), "{message}");
    // DELETED: absent, the run fails.
    fake.set_state(&p, &d, "READY");
    let (exit, _) = collect(res.start().await.expect("start again"));
    fake.set_state(&p, &d, "DELETED");
    assert_eq!(exit_code(exit).await, Some(1));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed));
    assert!(message.starts_with("DELETED"), "{message}");
    assert_eq!(
        res.status().await.expect("status"),
        kinfra_core::resource::Observed::Absent
    );
    assert_clean(prism, fake, &p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ready_state_keeps_the_last_state_with_a_warning() {
    let (prism, fake) = vercel();
    let (p, d) = fake.project("unknown", None, false, Some("READY"));
    let res = resource(&prism.url, &p, None);
    let (exit, lines) = collect(res.start().await.expect("start"));
    until_state(&res, ServiceState::Running).await;
    fake.set_state(&p, &d, "BLOCKED");
    until(
        "the unknown state is shown, the last state kept",
        || async {
            let (state, message) = reported(&res);
            state == Some(ServiceState::Running)
                && message.contains("unknown readyState BLOCKED; last known state kept")
        },
    )
    .await;
    // The warning goes to the run's log stream, which the collector reads on its own task:
    // the status above can be seen first.
    until("the warning line", || async {
        has_line(
            &lines,
            LogStream::Stderr,
            "warning: unknown readyState `BLOCKED`",
        )
    })
    .await;
    assert_eq!(res.provider_status().as_deref(), Some("BLOCKED"));
    assert_eq!(res.health().await.expect("health"), Health::Unknown);
    // An unknown `…ING` one is starting.
    fake.set_state(&p, &d, "ANALYZING");
    until_state(&res, ServiceState::Starting).await;
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(exit).await, Some(0));
    assert_clean(prism, fake, &p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_id_goes_as_team_id_on_every_call() {
    let (prism, fake) = vercel();
    let (p, d) = fake.project("team", Some(TEAM), true, Some("READY"));
    let res = resource(&prism.url, &p, Some(TEAM));
    let (exit, lines) = collect(res.start().await.expect("start"));
    until("running with its logs followed", || async {
        reported(&res).0 == Some(ServiceState::Running)
            && has_line(&lines, LogStream::System, "following the runtime logs")
    })
    .await;
    let ctx = instance(&prism.url, TOKEN, Some(TEAM));
    let provider = provider();
    for (command, given) in [
        ("list-deployments", json!({})),
        ("promote", json!({"deployment_id": d})),
        ("redeploy", json!({"deployment_id": d})),
    ] {
        execute(&provider, &ctx, &p, command, given, false)
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"));
    }
    res.stop(HANG).await.expect("stop");
    assert_eq!(exit_code(exit).await, Some(0));
    let requests = fake.requests(&p);
    for kind in [
        "GET /v9/projects",
        "/unpause",
        "/pause",
        "GET /v6/deployments",
        "/events",
        "/runtime-logs",
        "/promote/",
        "POST /v13/deployments",
    ] {
        assert!(
            requests.iter().any(|l| l.contains(kind)),
            "no {kind}: {requests:?}"
        );
    }
    for line in &requests {
        assert!(
            line.contains(&format!("teamId={TEAM}")),
            "no teamId: {line}"
        );
    }
    // Without it, the team's project is refused (403): permanent, naming the instance.
    let res = resource(&prism.url, &p, None);
    let error = res.start().await.expect_err("no team");
    assert!(error.is_permanent(), "{error:?}");
    assert!(error.to_string().contains("`vc`"), "{error}");
    assert!(error.to_string().contains("403"), "{error}");
    assert_clean(prism, fake, &p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_and_an_unknown_deployment_list_fail_permanently_naming_them() {
    let (prism, fake) = vercel();
    let (p, _) = fake.project("refused", None, false, Some("READY"));
    let res = provider()
        .project_resource(&instance(&prism.url, "wrong-token", None), &decl(&p))
        .expect("resource");
    let error = res.start().await.expect_err("refused");
    assert!(error.is_permanent(), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("refused the token of provider instance `vc` (401)"),
        "{text}"
    );
    assert!(!text.contains("wrong-token"), "{text}");
    // A 404 (the spec declares it for the deployments list) names the project.
    fake.inject(
        &p,
        &format!("GET /v6/deployments?projectId={p}"),
        Reply::json(
            404,
            r#"{"error":{"code":"not_found","message":"Project not found"}}"#,
        ),
        1,
    );
    let res = resource(&prism.url, &p, None);
    let error = res.start().await.expect_err("404");
    assert!(error.is_permanent(), "{error:?}");
    assert!(
        error
            .to_string()
            .contains(&format!("Vercel project `{p}` not found (404)")),
        "{error}"
    );
    // During a run, a refused token fails the run with the reason.
    let (exit, _) = collect(res.start().await.expect("start"));
    fake.inject(
        &p,
        &format!("GET /v9/projects/{p}"),
        Reply::json(
            401,
            r#"{"error":{"code":"unauthorized","message":"token revoked"}}"#,
        ),
        1,
    );
    assert_eq!(exit_code(exit).await, Some(1));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed));
    assert!(message.contains("(401)"), "{message}");
    assert_no_secret(&res, &text, &[("the token", TOKEN)]).await;
    assert_clean(prism, fake, &p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_wait_and_server_errors_show_in_last_sync_then_clear() {
    let (prism, fake) = vercel();
    let (p, _) = fake.project("faults", None, false, Some("READY"));
    let res = resource(&prism.url, &p, None);
    let (exit, _) = collect(res.start().await.expect("start"));
    until_healthy(&res).await;
    let reads = |fake: &VercelFake| fake.count(&p, &format!("GET /v9/projects/{p} "));
    // 429 with Retry-After: the loop waits that long; the state stays.
    fake.inject(
        &p,
        &format!("GET /v9/projects/{p}"),
        Reply::json(
            429,
            r#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
        )
        .header("Retry-After", "1"),
        1,
    );
    until_sync_error(&res, "429").await;
    let limited_at = std::time::Instant::now();
    let after_limit = reads(fake);
    until("observing again after the Retry-After", || async {
        reads(fake) > after_limit
    })
    .await;
    assert!(
        limited_at.elapsed() >= Duration::from_millis(800),
        "the next observe waited for Retry-After"
    );
    assert_eq!(reported(&res).0, Some(ServiceState::Running));
    // 429 without Retry-After: backs off, shown, then clears.
    fake.inject(
        &p,
        &format!("GET /v9/projects/{p}"),
        Reply::json(
            429,
            r#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
        ),
        1,
    );
    until_sync_error(&res, "429").await;
    until_synced(&res).await;
    // A burst of 500s: last_sync shows the error, the state stays, then it clears.
    fake.inject(
        &p,
        &format!("GET /v9/projects/{p}"),
        Reply::json(500, r#"{"error":{"code":"internal","message":"boom"}}"#),
        3,
    );
    until_sync_error(&res, "HTTP 500").await;
    assert_eq!(reported(&res).0, Some(ServiceState::Running), "kept");
    assert_eq!(res.provider_status().as_deref(), Some("READY"), "kept");
    until_synced(&res).await;
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(exit).await, Some(0));
    assert_no_secret(&res, "", &[("the token", TOKEN)]).await;
    assert_clean_but_undeclared(prism, fake, &p, &[429, 500]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_start_waits_for_retry_after_instead_of_failing() {
    let (prism, fake) = vercel();
    let (p, _) = fake.project("limitedstart", None, true, Some("READY"));
    fake.inject(
        &p,
        &format!("GET /v9/projects/{p}"),
        Reply::json(
            429,
            r#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
        )
        .header("Retry-After", "1"),
        1,
    );
    let res = resource(&prism.url, &p, None);
    let (exit, _) = collect(res.start().await.expect("the start waits and goes on"));
    assert_eq!(fake.count(&p, &format!("GET /v9/projects/{p} ")), 2);
    assert_eq!(fake.count(&p, "/unpause"), 1);
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(exit).await, Some(0));
    assert_clean_but_undeclared(prism, fake, &p, &[429]);
}

/// The log streams' (re)connects take their token from the instance's bucket like every other
/// request: with six tokens and the next one ten minutes away, no more than six requests
/// ever reach the API, however often the streams would reconnect (through Prism each
/// answers one line, so they reconnect every few hundred milliseconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_streams_take_a_token_from_the_rate_limit_on_every_connect() {
    const BUDGET: usize = 6;
    let (prism, fake) = vercel();
    let (p, _) = fake.project("streambucket", None, false, Some("READY"));
    let ctx = harness::instance(
        "vc",
        &prism.url,
        TOKEN,
        json!({ "rate_limit": format!("{BUDGET}/h") }),
    );
    let res = provider()
        .project_resource(&ctx, &decl(&p))
        .expect("resource");
    let (exit, _lines) = collect(res.start().await.expect("start"));
    until("the budget is spent", || async {
        fake.requests(&p).len() >= BUDGET
    })
    .await;
    // Without the bucket, the streams' reconnects (one every stream pause, 200 ms) would
    // pass the budget within this while.
    let quiet = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < quiet {
        let sent = fake.requests(&p);
        assert!(sent.len() <= BUDGET, "past the rate limit: {sent:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(exit).await, Some(0));
    assert_clean(prism, fake, &p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_sync_error_not_a_crash() {
    // Prism would turn a malformed answer into its own error: this one talks to the fake.
    let (prism, fake) = vercel();
    let (p, _) = fake.project("malformed", None, false, Some("READY"));
    let res = resource(&prism.fake_url, &p, None);
    let (exit, _) = collect(res.start().await.expect("start"));
    until_healthy(&res).await;
    fake.inject(
        &p,
        &format!("GET /v6/deployments?projectId={p}"),
        Reply::json(200, r#"{"deployments": [{"uid": "#),
        2,
    );
    until_sync_error(&res, "malformed JSON").await;
    assert_eq!(reported(&res).0, Some(ServiceState::Running));
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(exit).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_engine_unavailable_and_a_slow_one_times_out() {
    // Nothing listens on port 1.
    let res = resource("http://127.0.0.1:1", "prj_unreachable", None);
    let error = res.start().await.expect_err("no API");
    assert!(
        matches!(error, ResourceError::EngineUnavailable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("`vc`"), "{error}");

    let (prism, fake) = vercel();
    let (p, _) = fake.project("slow", None, false, Some("READY"));
    let provider = VercelProvider::with_http_config(HttpConfig {
        request_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    })
    .with_retry(RetryPolicy {
        max_attempts: 2,
        max_elapsed: Duration::from_secs(10),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(100),
        },
    });
    let res = provider
        .project_resource(&instance(&prism.url, TOKEN, None), &decl(&p))
        .expect("resource");
    fake.inject(
        &p,
        &format!("GET /v9/projects/{p}"),
        Reply::json(200, "{}").delayed(Duration::from_secs(2)),
        2,
    );
    assert_slow_start_times_out_then_runs(&res).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_a_dry_run_that_sends_nothing_and_shows_no_secret() {
    let (prism, fake) = vercel();
    let (p, d) = fake.project("dryrun", Some(TEAM), false, Some("READY"));
    let provider = provider();
    let ctx = instance(&prism.url, TOKEN, Some(TEAM));
    let commands: Vec<String> = provider.commands().iter().map(|c| c.id.clone()).collect();
    assert_eq!(
        commands,
        [
            "deploy",
            "redeploy",
            "promote",
            "cancel",
            "list-deployments"
        ]
    );
    assert!(provider.commands().iter().all(|c| c.dry_run));
    assert_eq!(
        provider
            .commands()
            .iter()
            .filter(|c| c.confirm)
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["cancel"]
    );
    let expect = [
        (
            "deploy",
            json!({"git_ref": "v2"}),
            vec![
                format!("GET {}/v9/projects/{p}?teamId={TEAM}", prism.url),
                format!("POST {}/v13/deployments?teamId={TEAM}", prism.url),
            ],
        ),
        (
            "redeploy",
            json!({"deployment_id": d}),
            vec![format!("POST {}/v13/deployments?teamId={TEAM}", prism.url)],
        ),
        (
            "promote",
            json!({"deployment_id": d}),
            vec![format!(
                "POST {}/v10/projects/{p}/promote/{d}?teamId={TEAM}",
                prism.url
            )],
        ),
        (
            "cancel",
            json!({"deployment_id": d}),
            vec![format!(
                "PATCH {}/v12/deployments/{d}/cancel?teamId={TEAM}",
                prism.url
            )],
        ),
        (
            "list-deployments",
            json!({"limit": 5}),
            vec![format!(
                "GET {}/v6/deployments?projectId={p}&limit=5&teamId={TEAM}",
                prism.url
            )],
        ),
    ];
    for (command, given, requests) in expect {
        let result = execute(&provider, &ctx, &p, command, given, true)
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(result.dry_run, "{command}");
        let shown: Vec<String> = result
            .requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.url))
            .collect();
        assert_eq!(shown, requests, "{command}");
        let text = serde_json::to_string(&result).expect("json");
        assert!(!text.contains(TOKEN), "{command}: {text}");
        assert!(
            result.requests.iter().all(|r| r
                .headers
                .iter()
                .any(|(k, v)| k == "Authorization" && v == "****")),
            "{command}: {text}"
        );
        if command == "redeploy" {
            assert_eq!(
                result.requests[0].body,
                Some(json!({"name": p, "project": p, "deploymentId": d, "target": "production"}))
            );
        }
    }
    assert_eq!(
        fake.requests(&p),
        Vec::<String>::new(),
        "a dry-run sends nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_deploy_redeploy_promote_cancel_and_list() {
    let (prism, fake) = vercel();
    let (p, first) = fake.project("commands", None, false, Some("READY"));
    let provider = provider();
    let ctx = instance(&prism.url, TOKEN, None);
    // deploy: from the project's link at its production branch.
    let deployed = execute(&provider, &ctx, &p, "deploy", json!({}), false)
        .await
        .expect("deploy");
    let new = deployed.operation.clone().expect("id");
    assert_eq!(deployed.data["readyState"], "QUEUED", "{:?}", deployed.data);
    let post = fake
        .requests(&p)
        .into_iter()
        .find(|l| l.starts_with("POST /v13/deployments"))
        .expect("POST");
    assert!(
        post.contains(r#""ref":"main""#) && post.contains(r#""repoId":4242"#),
        "{post}"
    );
    // cancel it while queued.
    let canceled = execute(
        &provider,
        &ctx,
        &p,
        "cancel",
        json!({"deployment_id": new}),
        false,
    )
    .await
    .expect("cancel");
    assert_eq!(canceled.operation_state.as_deref(), Some("CANCELED"));
    // redeploy the first one to preview; promote it to production.
    let redeployed = execute(
        &provider,
        &ctx,
        &p,
        "redeploy",
        json!({"deployment_id": first, "target": "staging"}),
        false,
    )
    .await
    .expect("redeploy");
    let preview = redeployed.operation.clone().expect("id");
    execute(
        &provider,
        &ctx,
        &p,
        "promote",
        json!({"deployment_id": preview}),
        false,
    )
    .await
    .expect("promote");
    let listed = execute(&provider, &ctx, &p, "list-deployments", json!({}), false)
        .await
        .expect("list");
    let ids: Vec<&str> = listed
        .data
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "{:?}", listed.data);
    assert_eq!(ids[0], preview, "the promoted one is production's latest");
    assert_eq!(listed.data[0]["target"], "production");
    // A failed command names what went wrong, without the token.
    let error = execute(
        &provider,
        &ctx,
        &p,
        "cancel",
        json!({"deployment_id": first}),
        false,
    )
    .await
    .expect_err("READY cannot be canceled");
    let text = error.to_string();
    assert!(
        text.contains("HTTP 400") && text.contains("cannot be canceled"),
        "{text}"
    );
    assert!(!text.contains(TOKEN));
    assert_clean(prism, fake, &p);
}

/// The body check itself: Prism lets an invalid Vercel body through, the validator does not.
#[tokio::test]
async fn an_invalid_request_body_passes_prism_but_not_the_body_check() {
    let (prism, fake) = vercel();
    let (p, _) = fake.project("badbody", None, false, Some("READY"));
    let answer = reqwest::Client::new()
        .post(format!("{}/v13/deployments", prism.url))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .json(&json!({"name": 7, "project": p, "colour": "red"}))
        .send()
        .await
        .expect("the relay answers");
    assert_eq!(answer.status().as_u16(), 400);
    assert!(
        prism.violations(&p).is_empty(),
        "Prism saw nothing: {:?}",
        prism.exchanges(&p)
    );
    let errors = fake.body_errors(&p);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("/name must be string"), "{errors:?}");
    assert!(errors[0].contains("(colour)"), "{errors:?}");
}

/// Build events arrive while their stream is still open (one connection, no polling): the
/// fake's state served without Prism, which cannot pass a multi-line stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_events_arrive_while_the_stream_is_open() {
    let (_, fake) = vercel();
    let (p, d) = fake.project("live", None, false, Some("BUILDING"));
    let server = StreamServer::start(fake).await;
    let res = resource(&server.url, &p, None);
    let (exit, lines) = collect(res.start().await.expect("start"));
    assert_eq!(reported(&res).0, Some(ServiceState::Starting));
    until("the first event", || async {
        has_line(
            &lines,
            LogStream::Stdout,
            "build: Cloning github.com/acme/site",
        )
    })
    .await;
    for step in ["step one", "step two"] {
        fake.add_event(&p, &d, "stdout", step);
        until(step, || async {
            has_line(&lines, LogStream::Stdout, &format!("build: {step}"))
        })
        .await;
    }
    assert_eq!(
        server.opened.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "every event came on the one open stream"
    );
    fake.add_event(&p, &d, "stderr", "warning: large bundle");
    fake.set_state(&p, &d, "READY");
    until("stderr event and READY", || async {
        has_line(&lines, LogStream::Stderr, "build: warning: large bundle")
            && reported(&res).0 == Some(ServiceState::Running)
    })
    .await;
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(exit).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_problems_are_named_by_key() {
    let provider = provider();
    let Value::Object(config) = json!({
        "provider": "vc",
        "project_id": "a/b",
        "colour": "red",
        "interval": "soon",
        "logs": "yes",
    }) else {
        unreachable!()
    };
    let d = ResourceDecl {
        name: "web".into(),
        config,
    };
    let mut bad_team = Map::new();
    bad_team.insert("team_id".into(), json!(12));
    let ctx = InstanceContext {
        instance: "vc".into(),
        config: bad_team,
        ..InstanceContext::default()
    };
    let problems: Vec<String> = provider
        .validate_resource(&ctx, &d)
        .await
        .iter()
        .map(|p| p.to_string())
        .collect();
    let text = problems.join("\n");
    for key in [
        "`colour`",
        "`project_id`",
        "`interval`",
        "`logs`",
        "`token`",
        "`team_id`",
    ] {
        assert!(text.contains(key), "{key} not named:\n{text}");
    }
    let Value::Object(config) = json!({ "provider": "vc" }) else {
        unreachable!()
    };
    let missing = provider
        .validate_resource(
            &instance("http://127.0.0.1:9", TOKEN, None),
            &ResourceDecl {
                name: "web".into(),
                config,
            },
        )
        .await;
    assert_eq!(
        missing.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        ["`project_id`: missing (required)"]
    );
    // The metadata lists every key with a description, and bearer auth.
    let meta = provider.metadata();
    let keys: Vec<&str> = meta.resource_types[0]
        .config
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(keys, ["project_id", "build_timeout", "logs"]);
    assert!(
        meta.resource_types[0]
            .config
            .iter()
            .all(|k| !k.description.is_empty())
    );
}

/// `kinfra plan`'s view of a start: the unpause of a paused project, nothing for a running
/// one; only the project's read is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_start_unpauses_a_paused_project_and_sends_only_a_read() {
    let (prism, fake) = vercel();
    let provider = provider();
    let (paused, _) = fake.project("planpaused", Some(TEAM), true, Some("READY"));
    let ctx = instance(&prism.url, TOKEN, Some(TEAM));
    let planned = provider
        .planned_start(&ctx, &decl(&paused))
        .await
        .expect("planned")
        .expect("the provider says");
    let shown: Vec<String> = planned
        .iter()
        .map(|r| format!("{} {}", r.method, r.url))
        .collect();
    assert_eq!(
        shown,
        [format!(
            "POST {}/v1/projects/{paused}/unpause?teamId={TEAM}",
            prism.url
        )]
    );
    assert!(!format!("{planned:?}").contains(TOKEN));
    assert_eq!(
        fake.requests(&paused)
            .iter()
            .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>(),
        ["GET"],
        "only the read was sent"
    );
    assert!(fake.with(&paused, |x| x.paused), "still paused");
    let (running, _) = fake.project("planrunning", None, false, Some("READY"));
    let planned = provider
        .planned_start(&instance(&prism.url, TOKEN, None), &decl(&running))
        .await
        .expect("planned");
    assert_eq!(planned, Some(Vec::new()));
    assert_clean(prism, fake, &paused);
    assert_clean(prism, fake, &running);
}
