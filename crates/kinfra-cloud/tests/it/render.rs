//! The `render` provider against the stateful fake behind Prism (Render's own public API
//! spec, `specs/render/`): resume and suspend followed to their end, DESIGN's state mapping
//! (suspended by its user = stopped, by Render = failed with the reason, maintenance mode,
//! unknown deploy statuses kept), logs followed into the run's output exactly once, every
//! command with and without a dry-run, and the faults (401, 404, 429 with and without
//! Retry-After, 5xx, unreachable, slow, malformed JSON), with no token in any error, log line
//! or dry-run.

use crate::fake_http::Reply;
use crate::render_fake::{self, OWNER, RenderFake, TOKEN, render};
use kinfra_cloud::render::{RenderProvider, RenderResource};
use kinfra_core::Secret;
use kinfra_core::resource::{OutputLine, Resource, ResourceError, Run};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::LogStream;
use kinfra_provider::command::validate;
use kinfra_provider::provider::{InstanceContext, Provider, ResourceDecl};
use serde_json::{Map, Value, json};
use std::future::Future;
use std::time::Duration;

/// A bound that only catches a hang.
const HANG: Duration = Duration::from_secs(30);

fn instance(base: &str, token: &str) -> InstanceContext {
    InstanceContext {
        instance: "rnd".into(),
        token: Some(Secret::new(token)),
        base_url: Some(base.into()),
        config: Map::new(),
    }
}

fn decl(service_id: &str) -> ResourceDecl {
    let Value::Object(config) = json!({
        "service_id": service_id,
        "interval": "100ms",
    }) else {
        unreachable!()
    };
    ResourceDecl {
        name: "web".into(),
        config,
    }
}

fn resource(base: &str, service_id: &str) -> RenderResource {
    RenderProvider::new()
        .service_resource(&instance(base, TOKEN), &decl(service_id))
        .expect("a valid resource")
}

/// Waits (bounded) until `check` says yes.
async fn until<F, Fut>(what: &str, mut check: F)
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

fn reported(r: &RenderResource) -> (Option<ServiceState>, String) {
    match r.reported_state() {
        Some(s) => (Some(s.state), s.message),
        None => (None, String::new()),
    }
}

async fn exit_code(run: Run) -> Option<i32> {
    tokio::time::timeout(HANG, run.exit)
        .await
        .expect("the run ends")
        .ok()
        .and_then(|e| e.code)
}

/// Nothing the resource shows holds the token.
async fn assert_no_secret(r: &RenderResource, also: &str) {
    let logs = r.logs(1000).await.expect("logs");
    let mut shown: Vec<String> = logs.iter().map(|l| l.text.clone()).collect();
    shown.push(format!("{:?}", r.reported_state()));
    shown.push(format!("{:?}", r.sync()));
    shown.push(format!("{:?}", r.exit_reason()));
    shown.push(format!("{r:?}"));
    shown.push(also.to_owned());
    for text in shown {
        assert!(!text.contains(TOKEN), "the token shows: {text}");
    }
}

async fn running(res: &RenderResource) {
    until("running and healthy", || async {
        reported(res).0 == Some(ServiceState::Running)
            && res.health().await.ok() == Some(Health::Healthy)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_service_is_resumed_runs_live_and_is_suspended_at_stop() {
    let (prism, fake) = render();
    let id = fake.service("resume", Some("live"), &["user"]);
    let res = resource(&prism.url, &id);
    let run = res.start().await.expect("start");
    assert!(!run.adopted, "a suspended service is resumed, not adopted");
    assert_eq!(fake.count(&id, "POST"), 1, "{:?}", fake.requests(&id));
    assert_eq!(fake.count(&id, &format!("POST /services/{id}/resume")), 1);
    // The resume's deploy: starting, with the resume's progress in the message.
    until("the resume's deploy shows as starting", || async {
        let (state, message) = reported(&res);
        state == Some(ServiceState::Starting)
            && message.contains("update_in_progress")
            && message.contains("resume requested")
    })
    .await;
    assert_eq!(res.health().await.expect("health"), Health::Unknown);
    running(&res).await;
    assert_eq!(reported(&res).1, "live");
    let sync = res.sync().expect("sync facts");
    assert_eq!(sync.provider_state.as_deref(), Some("live"));
    assert!(sync.last_sync.is_some_and(|s| s.ok));
    // The service's URL as a connection fact.
    let conn = res.connection();
    assert_eq!(conn.host, format!("{id}.onrender.com"));
    assert_eq!(
        conn.field("url").as_deref(),
        Some(format!("https://{id}.onrender.com").as_str())
    );
    assert_eq!(conn.field("service_id").as_deref(), Some(id.as_str()));
    // Stop suspends and follows the suspend; the run ends.
    res.stop(HANG).await.expect("stop");
    assert!(fake.suspended(&id));
    assert_eq!(fake.count(&id, "/suspend"), 1, "one suspend sent");
    assert_eq!(exit_code(run).await, Some(0));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Stopped));
    assert!(message.contains("suspended by kinfra"), "{message}");
    assert_eq!(res.provider_state().as_deref(), Some("suspended (user)"));
    assert_no_secret(&res, "").await;
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_suspended_by_render_fails_with_the_reason() {
    let (prism, fake) = render();
    // Suspended for billing: the start fails for good, naming why; no resume is sent.
    let id = fake.service("billing", Some("live"), &["billing"]);
    let res = resource(&prism.url, &id);
    let error = res.start().await.expect_err("billing suspension");
    assert!(error.is_permanent(), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("billing") && text.contains(&id), "{text}");
    assert_eq!(reported(&res).0, Some(ServiceState::Failed));
    assert_eq!(fake.count(&id, "POST"), 0, "{:?}", fake.requests(&id));
    prism.assert_clean(&id);

    // Suspended for crash-looping while it runs: the run fails with the reason.
    let id = fake.service("crashloop", Some("live"), &[]);
    let res = resource(&prism.url, &id);
    let run = res.start().await.expect("start");
    assert!(run.adopted, "a live service is adopted");
    running(&res).await;
    fake.suspend(&id, &["stuck_crashlooping"]);
    assert_eq!(exit_code(run).await, Some(1));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed));
    assert!(message.contains("crash-looping"), "{message}");
    assert!(
        res.exit_reason()
            .is_some_and(|m| m.contains("stuck_crashlooping")),
        "{:?}",
        res.exit_reason()
    );
    assert_eq!(
        res.provider_state().as_deref(),
        Some("suspended (stuck_crashlooping)")
    );
    // Stopping a failed service sends no suspend.
    res.stop(HANG).await.expect("stop");
    assert_eq!(fake.count(&id, "POST"), 0, "{:?}", fake.requests(&id));
    assert_no_secret(&res, &text).await;
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_shows_as_maintenance() {
    let (prism, fake) = render();
    let id = fake.service("maintenance", Some("live"), &[]);
    let res = resource(&prism.url, &id);
    let run = res.start().await.expect("start");
    running(&res).await;
    fake.with(&id, |s| s.maintenance = true);
    until("maintenance mode is maintenance", || async {
        reported(&res).0 == Some(ServiceState::Maintenance)
    })
    .await;
    assert_eq!(
        res.provider_state().as_deref(),
        Some("live (maintenance mode)")
    );
    fake.with(&id, |s| s.maintenance = false);
    running(&res).await;
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run).await, Some(0));
    assert_eq!(fake.count(&id, "POST"), 0, "keep sends nothing");
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_deploy_status_keeps_the_last_state_with_a_warning() {
    // A status the spec does not know: Prism would refuse the answer, so this one talks to
    // the fake directly.
    let (prism, fake) = render();
    let id = fake.service("unknownstatus", Some("live"), &[]);
    let res = resource(&prism.fake_url, &id);
    let run = res.start().await.expect("start");
    running(&res).await;
    fake.set_latest(&id, "paused_for_reasons");
    until("the unknown status is seen", || async {
        res.provider_state().as_deref() == Some("paused_for_reasons")
    })
    .await;
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Running), "the last state is kept");
    assert!(message.contains("unknown deploy status"), "{message}");
    assert_eq!(res.health().await.expect("health"), Health::Unknown);
    let logs = res.logs(100).await.expect("logs");
    assert!(
        logs.iter().any(|l| l
            .text
            .contains("warning: unknown deploy status `paused_for_reasons`")),
        "{logs:?}"
    );
    // An unknown `…_in_progress` status is starting.
    fake.set_latest(&id, "warming_in_progress");
    until("an unknown …_in_progress is starting", || async {
        reported(&res).0 == Some(ServiceState::Starting)
    })
    .await;
    fake.set_latest(&id, "live");
    running(&res).await;
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_suspended_outside_kinfra_ends_the_run_as_stopped() {
    let (prism, fake) = render();
    let id = fake.service("outside", Some("live"), &[]);
    let res = resource(&prism.url, &id);
    let run = res.start().await.expect("start");
    running(&res).await;
    fake.suspend(&id, &["user"]);
    assert_eq!(exit_code(run).await, Some(0));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Stopped));
    assert!(message.contains("suspended outside kinfra"), "{message}");
    assert_eq!(fake.count(&id, "POST"), 0, "kinfra sent nothing");
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_or_failed_latest_deploy_while_an_earlier_one_is_live_still_runs() {
    // Render keeps serving the live deploy when a newer one is canceled or fails: running,
    // with both deploys named; stopped or failed only once nothing is live.
    let (prism, fake) = render();
    let id = fake.service("earlierlive", Some("live"), &[]);
    let live = fake.latest_id(&id).expect("the live deploy");
    let res = resource(&prism.url, &id);
    let run = res.start().await.expect("start");
    running(&res).await;
    for status in ["canceled", "build_failed"] {
        let newer = fake.push_deploy(&id, status);
        until("the newer deploy is seen", || async {
            res.provider_state().as_deref() == Some(status)
        })
        .await;
        let (state, message) = reported(&res);
        assert_eq!(state, Some(ServiceState::Running), "{status}: {message}");
        assert_eq!(message, format!("deploy {newer} {status}; {live} live"));
        assert_eq!(res.health().await.expect("health"), Health::Healthy);
    }
    // The live one deactivated too: nothing serves, the failed latest fails the run.
    fake.set_deploy(&id, &live, "deactivated");
    assert_eq!(exit_code(run).await, Some(1), "nothing live: failed");
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed));
    assert!(message.contains("build_failed"), "{message}");
    assert_eq!(fake.count(&id, "POST"), 0, "{:?}", fake.requests(&id));
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_live_a_failed_deploy_fails_the_run_and_a_canceled_one_stops_it() {
    let (prism, fake) = render();
    // A new service whose first deploy fails.
    let id = fake.service("faileddeploy", None, &[]);
    let provider = RenderProvider::new();
    let ctx = instance(&prism.url, TOKEN);
    let d = decl(&id);
    let res = provider.service_resource(&ctx, &d).expect("resource");
    let run = res.start().await.expect("start");
    fake.with(&id, |s| s.fail_next_deploy = true);
    let spec = provider.command("deploy").expect("deploy");
    let result = provider
        .execute(
            &ctx,
            &d,
            spec,
            validate(spec, &Map::new()).expect("valid"),
            false,
        )
        .await
        .expect("deploy");
    let deploy_id = result.operation.clone().expect("the deploy's id");
    until("the deploy in progress shows as starting", || async {
        reported(&res) == (Some(ServiceState::Starting), "build_in_progress".into())
    })
    .await;
    assert_eq!(
        exit_code(run).await,
        Some(1),
        "a failed deploy ends the run"
    );
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed));
    assert!(
        message.contains(&deploy_id) && message.contains("build_failed"),
        "{message}"
    );
    // Starting it again fails at once with the same reason (nothing runs).
    let error = res.start().await.expect_err("the latest deploy failed");
    assert!(error.to_string().contains("build_failed"), "{error}");
    prism.assert_clean(&id);

    // A canceled first deploy: stopped, the run ends as stopped.
    let id = fake.service("canceleddeploy", None, &[]);
    let res = resource(&prism.url, &id);
    let run = res.start().await.expect("start");
    fake.push_deploy(&id, "canceled");
    assert_eq!(exit_code(run).await, Some(0), "nothing live: stopped");
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Stopped));
    assert!(message.contains("canceled"), "{message}");
    prism.assert_clean(&id);
}

/// Receives the run's output until `want` lines matched `keep` (bounded), then a little more
/// to catch a repeat.
async fn collect(
    run: &mut Run,
    keep: impl Fn(&OutputLine) -> bool,
    want: usize,
) -> Vec<OutputLine> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + HANG;
    while got.len() < want {
        // Short of lines at the deadline: the caller's assertion shows what came.
        let Ok(line) = tokio::time::timeout_at(deadline, run.output.recv()).await else {
            break;
        };
        let line = line.expect("the output stays open");
        if keep(&line) {
            got.push(line);
        }
    }
    // Three more polls (100 ms each): nothing shown twice.
    let quiet = tokio::time::Instant::now() + Duration::from_millis(400);
    while let Ok(Some(line)) = tokio::time::timeout_at(quiet, run.output.recv()).await {
        if keep(&line) {
            got.push(line);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_followed_into_the_run_output_each_line_once() {
    let (prism, fake) = render();
    let id = fake.service("logs", Some("live"), &[]);
    fake.log(&id, "before the run: not shown", "info", "app");
    // Timestamps have millisecond steps: the next line is later than the run's start.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let res = resource(&prism.url, &id);
    let mut run = res.start().await.expect("start");
    tokio::time::sleep(Duration::from_millis(5)).await;
    fake.log(&id, "Booting worker with pid: 17", "info", "app");
    fake.log(&id, "==> Build successful", "info", "build");
    fake.log(&id, "Traceback (most recent call last)", "error", "app");
    let from_service = |l: &OutputLine| l.stream != LogStream::System;
    let first = collect(&mut run, from_service, 3).await;
    let texts: Vec<&str> = first.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(
        texts,
        [
            "Booting worker with pid: 17",
            "[build] ==> Build successful",
            "Traceback (most recent call last)"
        ],
        "{first:?}"
    );
    assert_eq!(first[2].stream, LogStream::Stderr, "error level on stderr");
    assert_eq!(first[0].stream, LogStream::Stdout);
    // More lines than one page (100): every one shown once, in order, across pages.
    for i in 0..230 {
        fake.log(&id, &format!("line {i}"), "info", "app");
    }
    let lines = collect(&mut run, |l| l.text.starts_with("line "), 230).await;
    let texts: Vec<String> = lines.iter().map(|l| l.text.clone()).collect();
    let expected: Vec<String> = (0..230).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, expected, "each line once, in order");
    let asked = fake.requests(&id);
    let logs_calls: Vec<&String> = asked
        .iter()
        .filter(|l| l.starts_with("GET /logs"))
        .collect();
    assert!(
        logs_calls
            .iter()
            .all(|l| l.contains(&format!("ownerId={OWNER}"))
                && l.contains("direction=forward")
                && l.contains(&format!("resource={id}"))),
        "{logs_calls:?}"
    );
    assert!(
        logs_calls.iter().any(|l| l.contains("endTime=")),
        "a page with hasMore went on with nextStartTime/nextEndTime: {logs_calls:?}"
    );
    // The lines are in the resource's log too.
    let kept = res.logs(1000).await.expect("logs");
    assert!(kept.iter().any(|l| l.text == "line 229"));
    assert!(!kept.iter().any(|l| l.text.contains("before the run")));
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run).await, Some(0));
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_and_an_unknown_service_fail_permanently_naming_them() {
    let (prism, fake) = render();
    let id = fake.service("tokenfault", Some("live"), &["user"]);
    let bad = RenderProvider::new()
        .service_resource(&instance(&prism.url, "rnd_wrong_token_77"), &decl(&id))
        .expect("resource");
    let error = bad.start().await.expect_err("a refused token fails");
    assert!(error.is_permanent(), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("`rnd`") && text.contains("401"), "{text}");
    assert!(!text.contains("rnd_wrong_token_77"), "{text}");
    assert_eq!(fake.count(&id, "POST"), 0);
    prism.assert_clean(&id);

    let missing = "srv-nosuchservice0";
    let res = resource(&prism.url, missing);
    let error = res.start().await.expect_err("an unknown service fails");
    assert!(
        matches!(error, ResourceError::Invalid(_)),
        "permanent: {error:?}"
    );
    let text = error.to_string();
    assert!(text.contains(missing) && text.contains("404"), "{text}");
    assert_no_secret(&res, &text).await;
    prism.assert_clean(missing);

    // A token refused while it runs fails the run naming the instance.
    let id = fake.service("revoked", Some("live"), &[]);
    let res = resource(&prism.url, &id);
    let run = res.start().await.expect("start");
    running(&res).await;
    fake.inject(
        &id,
        &format!("GET /services/{id}$"),
        render_fake::error(401, "Unauthorized"),
        1,
    );
    assert_eq!(exit_code(run).await, Some(1));
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed));
    assert!(
        message.contains("`rnd`") && message.contains("401"),
        "{message}"
    );
    assert_no_secret(&res, "").await;
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_wait_and_server_errors_show_in_last_sync_then_clear() {
    let (prism, fake) = render();
    let id = fake.service("faults", Some("live"), &[]);
    let res = resource(&prism.url, &id);
    let run = res.start().await.expect("start");
    running(&res).await;
    let reads = |fake: &RenderFake| fake.count(&id, &format!("GET /services/{id} "));
    // 429 with Retry-After: the loop waits that long; the state stays.
    fake.inject(
        &id,
        &format!("GET /services/{id}$"),
        render_fake::error(429, "Rate limit exceeded").header("Retry-After", "1"),
        1,
    );
    until("the rate limit shows in last_sync", || async {
        res.sync()
            .and_then(|s| s.last_sync)
            .is_some_and(|s| !s.ok && s.error.is_some_and(|e| e.contains("429")))
    })
    .await;
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
    // 429 without Retry-After: a failed sync, then backing off and observing again.
    fake.inject(
        &id,
        &format!("GET /services/{id}$"),
        render_fake::error(429, "Rate limit exceeded"),
        1,
    );
    until("the second rate limit shows", || async {
        res.sync()
            .and_then(|s| s.last_sync)
            .is_some_and(|s| !s.ok && s.error.is_some_and(|e| e.contains("429")))
    })
    .await;
    until("a good observe clears it", || async {
        res.sync().and_then(|s| s.last_sync).is_some_and(|s| s.ok)
    })
    .await;
    // A burst of 500s: last_sync shows the error, the state stays, then it clears.
    fake.inject(
        &id,
        &format!("GET /services/{id}$"),
        render_fake::error(500, "Internal Server Error"),
        3,
    );
    until("the 500 shows in last_sync", || async {
        res.sync()
            .and_then(|s| s.last_sync)
            .is_some_and(|s| !s.ok && s.error.is_some_and(|e| e.contains("HTTP 500")))
    })
    .await;
    assert_eq!(reported(&res).0, Some(ServiceState::Running), "kept");
    assert_eq!(res.provider_state().as_deref(), Some("live"));
    until("a good observe clears it", || async {
        res.sync().and_then(|s| s.last_sync).is_some_and(|s| s.ok)
    })
    .await;
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run).await, Some(0));
    assert_no_secret(&res, "").await;
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_sync_error_not_a_crash() {
    // Prism would turn a malformed answer into its own error: this one talks to the fake.
    let (prism, fake) = render();
    let id = fake.service("malformed", Some("live"), &[]);
    let res = resource(&prism.fake_url, &id);
    let run = res.start().await.expect("start");
    running(&res).await;
    fake.inject(
        &id,
        &format!("GET /services/{id}$"),
        Reply::json(200, r#"{"suspended": "not_susp"#),
        2,
    );
    until("the malformed answer shows in last_sync", || async {
        res.sync()
            .and_then(|s| s.last_sync)
            .is_some_and(|s| !s.ok && s.error.is_some_and(|e| e.contains("malformed JSON")))
    })
    .await;
    assert_eq!(reported(&res).0, Some(ServiceState::Running));
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_engine_unavailable_and_a_slow_one_times_out() {
    // Nothing listens on port 1.
    let res = resource("http://127.0.0.1:1", "srv-unreachable");
    let error = res.start().await.expect_err("no API");
    assert!(
        matches!(error, ResourceError::EngineUnavailable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("`rnd`"), "{error}");

    let (prism, fake) = render();
    let id = fake.service("slow", Some("live"), &[]);
    let provider = RenderProvider::with_http_config(kinfra_provider::http::HttpConfig {
        request_timeout: Duration::from_millis(300),
        ..kinfra_provider::http::HttpConfig::default()
    });
    let res = provider
        .service_resource(&instance(&prism.url, TOKEN), &decl(&id))
        .expect("resource");
    fake.inject(
        &id,
        &format!("GET /services/{id}$"),
        Reply::json(200, "{}").delayed(Duration::from_secs(3)),
        4,
    );
    // Every attempt of the start's read (four by the provider's retry policy) is too slow.
    let error = res.start().await.expect_err("too slow");
    assert!(!error.is_permanent(), "a timeout may pass: {error:?}");
    assert!(error.to_string().contains("no answer within"), "{error}");
    // The next read answers in time.
    let run = res.start().await.expect("start");
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run).await, Some(0));
}

fn params(pairs: Value) -> Map<String, Value> {
    match pairs {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_a_dry_run_that_sends_nothing_and_shows_no_token() {
    let (prism, fake) = render();
    let id = fake.service("dryrun", Some("live"), &[]);
    let provider = RenderProvider::new();
    let ctx = instance(&prism.url, TOKEN);
    let d = decl(&id);
    let ids: Vec<&str> = provider.commands().iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "deploy",
            "cancel-deploy",
            "restart",
            "scale",
            "list-deploys",
            "start",
            "stop"
        ]
    );
    let cases = [
        (
            "deploy",
            json!({"clear_cache": true, "commit_id": "a1b2c3"}),
            "POST",
            format!("/services/{id}/deploys"),
            Some(json!({"clearCache": "clear", "commitId": "a1b2c3"})),
        ),
        (
            "deploy",
            json!({"image_url": "docker.io/acme/web:2"}),
            "POST",
            format!("/services/{id}/deploys"),
            Some(json!({"clearCache": "do_not_clear", "imageUrl": "docker.io/acme/web:2"})),
        ),
        (
            "cancel-deploy",
            json!({"deploy_id": "dep-abc123"}),
            "POST",
            format!("/services/{id}/deploys/dep-abc123/cancel"),
            None,
        ),
        (
            "restart",
            json!({}),
            "POST",
            format!("/services/{id}/restart"),
            None,
        ),
        (
            "scale",
            json!({"instances": 3}),
            "POST",
            format!("/services/{id}/scale"),
            Some(json!({"numInstances": 3})),
        ),
        (
            "list-deploys",
            json!({}),
            "GET",
            format!("/services/{id}/deploys"),
            None,
        ),
        (
            "start",
            json!({}),
            "POST",
            format!("/services/{id}/resume"),
            None,
        ),
        (
            "stop",
            json!({}),
            "POST",
            format!("/services/{id}/suspend"),
            None,
        ),
    ];
    for (command, given, method, path, body) in cases {
        let spec = provider.command(command).expect("command");
        assert!(spec.dry_run, "{command} supports a dry-run");
        assert!(!spec.confirm, "{command}");
        let checked = validate(spec, &params(given)).expect("valid params");
        let result = provider
            .execute(&ctx, &d, spec, checked, true)
            .await
            .expect("dry-run");
        assert!(result.dry_run && result.success, "{command}: {result:?}");
        assert_eq!(result.requests.len(), 1, "{command}");
        let req = &result.requests[0];
        assert_eq!(req.method, method, "{command}");
        assert_eq!(req.url, format!("{}{path}", prism.url), "{command}");
        assert_eq!(req.body, body, "{command}");
        let shown = serde_json::to_string(&result).expect("json");
        assert!(!shown.contains(TOKEN), "{command}: {shown}");
        assert!(
            req.headers
                .iter()
                .any(|(k, v)| k == "Authorization" && v == "****"),
            "{command}: {:?}",
            req.headers
        );
    }
    assert!(fake.requests(&id).is_empty(), "{:?}", fake.requests(&id));
    // Bad parameters are named before anything is sent.
    let scale = provider.command("scale").expect("scale");
    let problems = validate(scale, &Map::new()).expect_err("instances is required");
    assert!(problems.to_string().contains("instances"), "{problems}");
    let problems = validate(scale, &params(json!({"instances": 0}))).expect_err("at least 1");
    assert!(problems.to_string().contains("instances"), "{problems}");
    let cancel = provider.command("cancel-deploy").expect("cancel-deploy");
    assert!(
        validate(cancel, &Map::new()).is_err(),
        "deploy_id is required"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_acts_on_the_service() {
    let (prism, fake) = render();
    let id = fake.service("commands", Some("live"), &[]);
    fake.with(&id, |s| s.deploy_time = Duration::from_secs(60));
    let provider = RenderProvider::new();
    let ctx = instance(&prism.url, TOKEN);
    let d = decl(&id);
    let run = |command: &'static str, given: Value| {
        let provider = &provider;
        let ctx = &ctx;
        let d = &d;
        async move {
            let spec = provider.command(command).expect("command");
            let checked = validate(spec, &params(given)).expect("valid");
            provider
                .execute(ctx, d, spec, checked, false)
                .await
                .unwrap_or_else(|e| panic!("{command}: {e}"))
        }
    };
    let deployed = run("deploy", json!({"commit_id": "a1b2c3"})).await;
    let deploy_id = deployed.operation.clone().expect("deploy id");
    assert_eq!(
        deployed.operation_state.as_deref(),
        Some("build_in_progress")
    );
    assert_eq!(deployed.data["commit"]["id"], "a1b2c3", "{deployed:?}");
    let listed = run("list-deploys", json!({})).await;
    assert_eq!(
        listed.data[0]["deploy"]["id"],
        deploy_id.as_str(),
        "{listed:?}"
    );
    let canceled = run("cancel-deploy", json!({ "deploy_id": deploy_id })).await;
    assert_eq!(canceled.data["status"], "canceled", "{canceled:?}");
    assert_eq!(fake.latest(&id).as_deref(), Some("canceled"));
    run("restart", json!({})).await;
    assert_eq!(fake.with(&id, |s| s.restarts), 1);
    run("scale", json!({"instances": 3})).await;
    assert_eq!(fake.with(&id, |s| s.instances), 3);
    run("stop", json!({})).await;
    until("suspended by the stop command", || async {
        fake.suspended(&id)
    })
    .await;
    run("start", json!({})).await;
    assert!(!fake.suspended(&id));
    // A command the API refuses fails naming it, without the token.
    let spec = provider.command("cancel-deploy").expect("cancel-deploy");
    let refused = provider
        .execute(
            &ctx,
            &d,
            spec,
            validate(spec, &params(json!({"deploy_id": deploy_id}))).expect("valid"),
            false,
        )
        .await
        .expect_err("a canceled deploy cannot be canceled");
    let text = refused.to_string();
    assert!(
        text.contains("cancel-deploy") && text.contains("400"),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "{text}");
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_problems_are_named_by_key() {
    let provider = RenderProvider::new();
    let Value::Object(config) = json!({
        "service_id": "web-Not-An-Id",
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
    let ctx = InstanceContext {
        instance: "rnd".into(),
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
        "`service_id`",
        "`interval`",
        "`logs`",
        "`token`",
    ] {
        assert!(text.contains(key), "{key} not named:\n{text}");
    }
    assert!(text.contains("not a Render service id"), "{text}");
    let Value::Object(config) = json!({}) else {
        unreachable!()
    };
    let missing = provider
        .validate_resource(
            &instance("http://127.0.0.1:9", TOKEN),
            &ResourceDecl {
                name: "web".into(),
                config,
            },
        )
        .await;
    assert_eq!(
        missing.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        ["`service_id`: missing (required)"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_into_maintenance_mode_is_done_not_timed_out() {
    let (prism, fake) = render();
    let id = fake.service("resumemaint", Some("live"), &["user"]);
    fake.with(&id, |s| s.maintenance = true);
    let mut d = decl(&id);
    d.config.insert("operation_timeout".into(), json!("1s"));
    let res = RenderProvider::new()
        .service_resource(&instance(&prism.url, TOKEN), &d)
        .expect("resource");
    let run = res.start().await.expect("start");
    until("maintenance after the resume", || async {
        reported(&res).0 == Some(ServiceState::Maintenance)
    })
    .await;
    // Past the operation timeout: still maintenance, the resume counted as done.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Maintenance), "{message}");
    let logs = res.logs(100).await.expect("logs");
    assert!(
        logs.iter()
            .any(|l| l.text == "resumed: maintenance mode is on"),
        "{logs:?}"
    );
    res.release(HANG).await.expect("release");
    assert_eq!(exit_code(run).await, Some(0));
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_takes_longer_than_operation_timeout_fails_the_run() {
    let (prism, fake) = render();
    let id = fake.service("resumeslow", Some("live"), &["user"]);
    fake.with(&id, |s| s.deploy_time = Duration::from_secs(60));
    let mut d = decl(&id);
    d.config.insert("operation_timeout".into(), json!("1s"));
    let res = RenderProvider::new()
        .service_resource(&instance(&prism.url, TOKEN), &d)
        .expect("resource");
    let run = res.start().await.expect("start");
    assert_eq!(exit_code(run).await, Some(1), "the resume timed out");
    let (state, message) = reported(&res);
    assert_eq!(state, Some(ServiceState::Failed));
    assert!(
        message.contains("did not finish within 1s") && message.contains("update_in_progress"),
        "{message}"
    );
    prism.assert_clean(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_start_reads_the_service_and_renders_only_a_resume_it_would_send() {
    let (prism, fake) = render();
    let provider = RenderProvider::new();
    let ctx = instance(&prism.url, TOKEN);
    let suspended = fake.service("plansuspended", Some("live"), &["user"]);
    let planned = provider
        .planned_start(&ctx, &decl(&suspended))
        .await
        .expect("planned")
        .expect("rendered");
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert_eq!(planned[0].method, "POST");
    assert_eq!(
        planned[0].url,
        format!("{}/services/{suspended}/resume", prism.url)
    );
    let live = fake.service("planlive", Some("live"), &[]);
    let planned = provider
        .planned_start(&ctx, &decl(&live))
        .await
        .expect("planned")
        .expect("rendered");
    assert!(
        planned.is_empty(),
        "a live service needs nothing: {planned:?}"
    );
    let billing = fake.service("planbilling", Some("live"), &["billing"]);
    let refused = provider
        .planned_start(&ctx, &decl(&billing))
        .await
        .expect_err("a billing suspension cannot be started");
    assert!(refused.to_string().contains("billing"), "{refused}");
    let canceled = fake.service("plancanceled", Some("canceled"), &[]);
    let refused = provider
        .planned_start(&ctx, &decl(&canceled))
        .await
        .expect_err("nothing runs");
    assert!(refused.to_string().contains("canceled"), "{refused}");
    for id in [&suspended, &live, &billing, &canceled] {
        assert_eq!(fake.count(id, "POST"), 0, "plan sent something");
        prism.assert_clean(id);
    }
}
