//! The `fly` provider against the stateful Fly Machines fake behind Prism: every exchange is
//! checked against Fly's own spec (`assert_clean` on the test's own app).
//!
//! Fly's spec declares only the success (and a few 400/409) answers of the machine
//! operations: a fault the tests inject (401, 404, 408, 429, 5xx) is an answer Prism cannot
//! match, which it reports as a warning. [`assert_clean_but`] accepts exactly that warning on
//! exactly those injected answers, and nothing else.

use crate::fake_http::Reply;
use crate::fly_fake::{FlyFake, TOKEN, fly};
use crate::prism::Prism;
use kinfra_cloud::fly::{FlyProvider, MachineState};
use kinfra_core::Secret;
use kinfra_core::resource::{Observed, Resource, ResourceError};
use kinfra_core::state::ServiceState;
use kinfra_provider::command::validate;
use kinfra_provider::provider::{InstanceContext, Provider, ProviderError, ResourceDecl};
use kinfra_provider::result::CommandResult;
use kinfra_provider::retry::{Backoff, RetryPolicy};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// A generous bound that only catches a hang.
const HANG: Duration = Duration::from_secs(60);
/// The instance name every test uses.
const INSTANCE: &str = "fly-test";

fn provider() -> FlyProvider {
    FlyProvider::new().with_retry(RetryPolicy {
        max_attempts: 4,
        max_elapsed: Duration::from_secs(30),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
    })
}

fn single() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    }
}

fn instance(base_url: &str, token: &str) -> InstanceContext {
    InstanceContext {
        instance: INSTANCE.into(),
        token: Some(Secret::new(token)),
        base_url: Some(base_url.into()),
        config: Map::new(),
    }
}

fn decl(config: Value) -> ResourceDecl {
    let Value::Object(config) = config else {
        panic!("not an object")
    };
    ResourceDecl {
        name: "web".into(),
        config,
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {HANG:?}"))
}

/// Waits (bounded) until `cond` holds, polling.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

fn requests_matching(fake: &FlyFake, app: &str, needle: &str) -> Vec<String> {
    fake.requests(app)
        .into_iter()
        .filter(|r| r.contains(needle))
        .collect()
}

/// Like `assert_clean`, except that answers with a status in `undeclared` (faults the test
/// injected, which Fly's spec does not declare) may carry Prism's "Unable to match the
/// returned status code" warning, and nothing else.
fn assert_clean_but(prism: &Prism, app: &str, undeclared: &[u16]) {
    let seen = prism.exchanges(app);
    assert!(
        !seen.is_empty(),
        "no exchange through Prism matched `{app}`"
    );
    let bad: Vec<String> = seen
        .iter()
        .filter_map(|e| {
            let v = e.violation.as_ref()?;
            let expected = undeclared.contains(&e.status)
                && v.contains("Unable to match the returned status code")
                && !v.contains("\"Error\"");
            (!expected).then(|| format!("{} {} → {}: {v}", e.method, e.target, e.status))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "exchanges left the spec:\n{}",
        bad.join("\n")
    );
}

#[tokio::test]
async fn start_starts_a_stopped_machine_and_follows_it_with_the_wait_long_poll() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("start", &["stopped"], false);
    let id = &ids[0];
    let resource = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": id, "interval": "30s" })),
        )
        .expect("resource");
    let run = within("start", resource.start()).await.expect("started");
    assert!(!run.adopted);
    assert_eq!(fake.state(&app, id), "started");
    let seen = fake.requests(&app);
    let position = |needle: &str| {
        seen.iter()
            .position(|r| r.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {seen:#?}"))
    };
    assert!(
        position("/start") < position("/wait?state=started"),
        "{seen:#?}"
    );
    // The start was followed by the long-poll, not by a burst of reads.
    let reads = requests_matching(fake, &app, &format!("GET /v1/apps/{app}/machines/{id} "));
    assert!(reads.len() <= 4, "tight polling: {seen:#?}");
    let sync = resource.sync().expect("synced");
    assert_eq!(sync.provider_state.as_deref(), Some("started"));
    let reported = resource.reported_state().expect("reported");
    assert_eq!(reported.state, ServiceState::Running);
    // The machine's events are in the resource's log.
    let logs = within("logs", resource.logs(100)).await.expect("logs");
    assert!(
        logs.iter().any(|l| l.text.contains("event: start")),
        "{logs:?}"
    );
    prism.assert_clean(&app);
}

#[tokio::test]
async fn a_started_machine_is_adopted_and_stop_stops_or_suspends_it() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("stop", &["started", "started"], false);
    let resource = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": ids[0] })),
        )
        .expect("resource");
    let run = within("start", resource.start()).await.expect("started");
    assert!(run.adopted, "a started machine is adopted, not started");
    assert!(requests_matching(fake, &app, "/start").is_empty());
    within("stop", resource.stop(Duration::from_secs(10)))
        .await
        .expect("stopped");
    assert_eq!(fake.state(&app, &ids[0]), "stopped");
    let stops = requests_matching(fake, &app, "/stop");
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert!(stops[0].contains("\"timeout\":\"10s\""), "{stops:?}");
    within("the run's end", run.exit).await.expect("an exit");
    assert_eq!(
        resource.reported_state().map(|r| r.state),
        Some(ServiceState::Stopped)
    );
    // Stopping a stopped machine sends nothing more.
    within("stop", resource.stop(Duration::from_secs(10)))
        .await
        .expect("stopped");
    assert_eq!(requests_matching(fake, &app, "/stop").len(), 1);

    // stop_mode = suspend: the second machine is suspended, which is sleeping.
    let suspending = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": ids[1], "stop_mode": "suspend" })),
        )
        .expect("resource");
    within("start", suspending.start()).await.expect("adopted");
    within("stop", suspending.stop(Duration::from_secs(10)))
        .await
        .expect("suspended");
    assert_eq!(fake.state(&app, &ids[1]), "suspended");
    assert_eq!(requests_matching(fake, &app, "/suspend").len(), 1);
    let reported = suspending.reported_state().expect("reported");
    assert_eq!(reported.state, ServiceState::Sleeping, "{reported:?}");
    // And the next start resumes it.
    within("start", suspending.start()).await.expect("resumed");
    assert_eq!(fake.state(&app, &ids[1]), "started");
    prism.assert_clean(&app);
}

#[tokio::test]
async fn the_observe_loop_long_polls_wait_and_sees_outside_changes() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("outside", &["started"], true);
    let id = &ids[0];
    let resource = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": id, "interval": "1s", "wait_timeout": "2s" })),
        )
        .expect("resource");
    let run = within("start", resource.start()).await.expect("adopted");
    // Stopped outside kinfra (Fly's autostop): with autostart it is sleeping, and the run ends.
    fake.set_state(&app, id, "stopped");
    let exit = within("the run's end", run.exit).await.expect("an exit");
    assert_eq!(exit.code, Some(0));
    let reported = resource.reported_state().expect("reported");
    assert_eq!(reported.state, ServiceState::Sleeping, "{reported:?}");
    assert!(reported.message.contains("stopped"), "{reported:?}");
    // The loop asked `wait` for the state it expected next, bounded by wait_timeout.
    let waits = requests_matching(fake, &app, "/wait?state=stopped&timeout=2");
    assert!(!waits.is_empty(), "{:#?}", fake.requests(&app));
    assert!(
        waits.iter().all(|w| w.contains("version=01JFAKEVERSION")),
        "{waits:?}"
    );
    prism.assert_clean(&app);
}

#[tokio::test]
async fn an_apps_machines_are_long_polled_each_so_an_outside_change_is_seen_before_the_interval() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("app-waits", &["started", "started", "started"], false);
    let resource = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "interval": "1h", "wait_timeout": "1s" })),
        )
        .expect("resource");
    let run = within("start", resource.start()).await.expect("adopted");
    assert!(run.adopted);
    let lists = |fake: &FlyFake| {
        fake.requests(&app)
            .iter()
            .filter(|r| r.starts_with(&format!("GET /v1/apps/{app}/machines ")))
            .count()
    };
    let listed_at_start = lists(fake);
    // Suspended outside kinfra: seen through that machine's own long-poll and read.
    fake.set_state(&app, &ids[1], "suspended");
    until("the suspended machine seen", || {
        resource.sync().and_then(|s| s.provider_state).as_deref() == Some("started ×2, suspended")
    })
    .await;
    assert_eq!(
        resource.reported_state().map(|r| r.state),
        Some(ServiceState::Running),
        "two machines still run"
    );
    // Each machine had its own long-poll for the state it would reach next; no list since
    // the start (the interval is an hour).
    for id in &ids {
        let waits = requests_matching(
            fake,
            &app,
            &format!("/machines/{id}/wait?state=stopped&timeout=1"),
        );
        assert!(!waits.is_empty(), "{id}: {:#?}", fake.requests(&app));
    }
    assert_eq!(lists(fake), listed_at_start, "{:#?}", fake.requests(&app));
    // All of them stop outside kinfra: the run ends, no list needed either.
    fake.set_state(&app, &ids[0], "stopped");
    fake.set_state(&app, &ids[2], "stopped");
    let exit = within("the run's end", run.exit).await.expect("an exit");
    assert_eq!(exit.code, Some(0));
    assert_eq!(
        resource.reported_state().map(|r| r.state),
        Some(ServiceState::Stopped)
    );
    assert_eq!(lists(fake), listed_at_start);
    prism.assert_clean(&app);
}

#[tokio::test]
async fn machine_states_map_as_designed_and_unknown_ones_keep_the_last() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("map", &["started"], false);
    let (sleepy, sleepy_ids) = fake.app("map-autostart", &["stopped"], true);
    let id = &ids[0];
    let resource = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": id })),
        )
        .expect("resource");
    let cases = [
        ("created", MachineState::Starting, Observed::Running),
        ("starting", MachineState::Starting, Observed::Running),
        ("started", MachineState::Running, Observed::Running),
        ("stopping", MachineState::Stopping, Observed::Running),
        ("suspending", MachineState::Stopping, Observed::Running),
        ("stopped", MachineState::Stopped, Observed::Idle),
        ("suspended", MachineState::Sleeping, Observed::Idle),
        ("failed", MachineState::Failed, Observed::Idle),
        ("replacing", MachineState::Starting, Observed::Running),
        // An unknown …ing state is tolerated: starting.
        ("migrating", MachineState::Starting, Observed::Running),
        ("destroyed", MachineState::Absent, Observed::Absent),
    ];
    for (state, want, observed) in cases {
        fake.set_state(&app, id, state);
        let seen = within("status", resource.status()).await.expect("status");
        assert_eq!(seen, observed, "{state}");
        assert_eq!(resource.state(), Some((want, state.to_owned())), "{state}");
        assert_eq!(
            resource.sync().and_then(|s| s.provider_state).as_deref(),
            Some(state)
        );
        let reported = resource.reported_state().expect("reported");
        assert_eq!(reported.state, want.service_state(), "{state}");
    }
    // An unknown state that is no …ing keeps the last state, with a warning in the log.
    fake.set_state(&app, id, "started");
    within("status", resource.status()).await.expect("status");
    fake.set_state(&app, id, "quantum");
    within("status", resource.status()).await.expect("status");
    assert_eq!(
        resource.state().map(|(s, _)| s),
        Some(MachineState::Running)
    );
    assert_eq!(
        resource.sync().and_then(|s| s.provider_state).as_deref(),
        Some("quantum")
    );
    let reported = resource.reported_state().expect("reported");
    assert_eq!(reported.state, ServiceState::Running);
    assert!(
        reported.message.contains("unknown state quantum"),
        "{reported:?}"
    );
    let logs = within("logs", resource.logs(100)).await.expect("logs");
    assert!(
        logs.iter()
            .any(|l| l.text.contains("unknown Fly machine state `quantum`")),
        "{logs:?}"
    );
    // Stopped with autostart: sleeping.
    let sleeper = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": sleepy, "machine_id": sleepy_ids[0] })),
        )
        .expect("resource");
    within("status", sleeper.status()).await.expect("status");
    assert_eq!(
        sleeper.reported_state().map(|r| r.state),
        Some(ServiceState::Sleeping)
    );
    prism.assert_clean(&app);
    prism.assert_clean(&sleepy);
}

#[tokio::test]
async fn a_machine_that_fails_to_start_fails_the_start_with_its_last_event() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("failstart", &["stopped"], false);
    fake.with(&app, |a| a.fail_next_start = true);
    let resource = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": ids[0], "wait_timeout": "1s" })),
        )
        .expect("resource");
    let error = within("start", resource.start())
        .await
        .expect_err("the machine failed");
    assert!(error.is_permanent(), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("`failed`"), "{text}");
    assert!(text.contains("oom killed"), "{text}");
    let reported = resource.reported_state().expect("reported");
    assert_eq!(reported.state, ServiceState::Failed);
    prism.assert_clean(&app);
}

#[tokio::test]
async fn an_app_without_machine_id_starts_and_stops_every_machine() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("whole", &["stopped", "suspended", "started"], false);
    let resource = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "interval": "1s" })),
        )
        .expect("resource");
    let run = within("start", resource.start()).await.expect("started");
    assert!(!run.adopted);
    for id in &ids {
        assert_eq!(fake.state(&app, id), "started", "{id}");
    }
    // Only the two that were not started got a start.
    assert_eq!(requests_matching(fake, &app, "/start").len(), 2);
    assert_eq!(
        resource.sync().and_then(|s| s.provider_state).as_deref(),
        Some("started ×3")
    );
    within("stop", resource.stop(Duration::from_secs(10)))
        .await
        .expect("stopped");
    for id in &ids {
        assert_eq!(fake.state(&app, id), "stopped", "{id}");
    }
    assert_eq!(
        resource.reported_state().map(|r| r.state),
        Some(ServiceState::Stopped)
    );
    within("the run's end", run.exit).await.expect("an exit");
    // An app's machines are observed with one list call.
    let run = within("start", resource.start()).await.expect("started");
    fake.set_state(&app, &ids[0], "failed");
    fake.set_state(&app, &ids[1], "stopped");
    fake.set_state(&app, &ids[2], "stopped");
    let exit = within("the run's end", run.exit).await.expect("an exit");
    assert_eq!(exit.code, Some(1));
    assert_eq!(
        resource.reported_state().map(|r| r.state),
        Some(ServiceState::Failed)
    );
    assert!(requests_matching(fake, &app, "/wait").len() >= 3);
    prism.assert_clean(&app);
}

#[tokio::test]
async fn a_refused_token_fails_for_good_naming_the_instance_and_never_the_token() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("badtoken", &["stopped"], false);
    let wrong = "FlyV1 fm2_wrong_token_55e1";
    let resource = provider()
        .machine_resource(
            &instance(&prism.url, wrong),
            &decl(json!({ "app": app, "machine_id": ids[0] })),
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
    let last = resource.sync().and_then(|s| s.last_sync).expect("last");
    assert!(!last.ok);
    assert!(!last.error.unwrap_or_default().contains(wrong));
    // One attempt: a 401 is not retried.
    assert_eq!(prism.exchanges(&app).len(), 1);
    assert_eq!(fake.state(&app, &ids[0]), "stopped");
    assert_clean_but(prism, &app, &[401]);
}

#[tokio::test]
async fn a_wrong_machine_id_fails_naming_it() {
    let (prism, fake) = fly();
    let (app, _) = fake.app("wrongid", &["stopped"], false);
    let resource = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": "e82nosuchmachine" })),
        )
        .expect("resource");
    let error = within("start", resource.start())
        .await
        .expect_err("not found");
    assert!(error.is_permanent(), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("e82nosuchmachine"), "{text}");
    assert!(text.contains("404"), "{text}");
    assert_clean_but(prism, &app, &[404]);
}

#[tokio::test]
async fn rate_limits_with_and_without_retry_after_are_waited_out_not_failed() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("ratelimit", &["stopped"], false);
    let limited = Reply::json(429, r#"{"error":"rate limit exceeded"}"#);
    fake.inject(
        &app,
        &format!("POST /v1/apps/{app}/machines/{}/start", ids[0]),
        limited.clone().header("Retry-After", "1"),
        1,
    );
    fake.inject(
        &app,
        &format!("POST /v1/apps/{app}/machines/{}/start", ids[0]),
        limited,
        1,
    );
    let resource = provider()
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": ids[0] })),
        )
        .expect("resource");
    within("start", resource.start())
        .await
        .expect("started after the limit");
    assert_eq!(fake.state(&app, &ids[0]), "started");
    let posts: Vec<u16> = prism
        .exchanges(&app)
        .into_iter()
        .filter(|e| e.method == "POST")
        .map(|e| e.status)
        .collect();
    assert_eq!(posts, [429, 429, 200]);
    assert_clean_but(prism, &app, &[429]);
}

#[tokio::test]
async fn a_5xx_burst_shows_in_last_sync_and_the_run_goes_on() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("burst", &["started"], false);
    let resource = provider()
        .with_retry(single())
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": ids[0], "interval": "100ms", "wait_timeout": "1s" })),
        )
        .expect("resource");
    let mut run = within("start", resource.start()).await.expect("adopted");
    let failing = Reply::json(502, r#"{"error":"upstream exploded"}"#);
    fake.inject(&app, "/wait?", failing, 3);
    until("a failed sync", || {
        resource
            .sync()
            .and_then(|s| s.last_sync)
            .is_some_and(|l| !l.ok)
    })
    .await;
    let last = resource.sync().and_then(|s| s.last_sync).expect("last");
    assert!(last.error.expect("an error").contains("502"));
    assert_eq!(
        resource.state().map(|(s, _)| s),
        Some(MachineState::Running)
    );
    until("a good sync again", || {
        resource
            .sync()
            .and_then(|s| s.last_sync)
            .is_some_and(|l| l.ok)
    })
    .await;
    assert!(run.exit.try_recv().is_err(), "the run ended on a 5xx burst");
    assert_clean_but(prism, &app, &[502]);
}

#[tokio::test]
async fn a_wait_that_times_out_with_fly_s_408_is_not_a_failure() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("w408", &["started"], false);
    let resource = provider()
        .with_retry(single())
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": ids[0], "interval": "100ms", "wait_timeout": "1s" })),
        )
        .expect("resource");
    let mut run = within("start", resource.start()).await.expect("adopted");
    // The live API's answer to a wait that timed out.
    let timed_out = Reply::json(
        408,
        r#"{"error":"deadline_exceeded: timeout waiting for machine to be stopped"}"#,
    );
    fake.inject(&app, "/wait?", timed_out, 2);
    until("the 408s answered", || {
        prism
            .exchanges(&app)
            .iter()
            .filter(|e| e.status == 408)
            .count()
            == 2
    })
    .await;
    until("a read after them", || {
        prism
            .exchanges(&app)
            .iter()
            .rev()
            .take_while(|e| e.status != 408)
            .any(|e| !e.target.contains("/wait"))
    })
    .await;
    let last = resource.sync().and_then(|s| s.last_sync).expect("last");
    assert!(last.ok, "{last:?}");
    assert!(run.exit.try_recv().is_err());
    assert_clean_but(prism, &app, &[408]);
}

#[tokio::test]
async fn malformed_json_fails_the_call_without_a_crash() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("badjson", &["stopped"], false);
    let garbage = Reply::json(200, r#"{"id": "#);
    fake.inject(&app, "GET /v1/apps", garbage.clone(), 1);
    let resource = provider()
        .with_retry(single())
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": ids[0] })),
        )
        .expect("resource");
    within("start", resource.start())
        .await
        .expect_err("Prism refuses the malformed answer");
    // Prism cannot pass an answer that does not parse: it answers itself (a violation).
    assert_eq!(prism.violations(&app).len(), 1);
    // So the provider's own handling is seen straight against the fake.
    fake.inject(&app, "GET /v1/apps", garbage, 1);
    let direct = provider()
        .with_retry(single())
        .machine_resource(
            &instance(&prism.fake_url, TOKEN),
            &decl(json!({ "app": app, "machine_id": ids[0] })),
        )
        .expect("resource");
    let error = within("start", direct.start())
        .await
        .expect_err("malformed");
    assert!(!error.is_permanent(), "a retry may succeed: {error:?}");
    let text = error.to_string();
    assert!(text.contains("malformed JSON"), "{text}");
    assert!(text.contains(&ids[0]), "{text}");
    assert!(!direct.sync().and_then(|s| s.last_sync).expect("last").ok);
    within("start", direct.start()).await.expect("started");
    assert_eq!(fake.state(&app, &ids[0]), "started");
}

#[tokio::test]
async fn an_unreachable_api_is_engine_unavailable_for_this_resource() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let resource = provider()
        .with_retry(single())
        .machine_resource(
            &instance(&format!("http://{closed}"), TOKEN),
            &decl(json!({ "app": "gone", "machine_id": "e82gone" })),
        )
        .expect("resource");
    let error = within("start", resource.start())
        .await
        .expect_err("unreachable");
    assert!(
        matches!(error, ResourceError::EngineUnavailable { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains(&format!("`{INSTANCE}`")), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
}

#[tokio::test]
async fn a_slow_api_times_out_naming_the_call() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("slow", &["stopped"], false);
    fake.inject(
        &app,
        "GET /v1/apps",
        Reply::json(200, "{}").delayed(Duration::from_secs(5)),
        1,
    );
    let resource = FlyProvider::with_http_config(kinfra_provider::http::HttpConfig {
        request_timeout: Duration::from_millis(500),
        ..kinfra_provider::http::HttpConfig::default()
    })
    .with_retry(single())
    .machine_resource(
        &instance(&prism.url, TOKEN),
        &decl(json!({ "app": app, "machine_id": ids[0] })),
    )
    .expect("resource");
    let error = within("start", resource.start())
        .await
        .expect_err("timed out");
    assert!(!error.is_permanent(), "a timeout may pass: {error:?}");
    let text = error.to_string();
    assert!(text.contains("no answer within"), "{text}");
    assert!(text.contains(&ids[0]), "{text}");
}

#[tokio::test]
async fn a_wait_long_poll_longer_than_the_instance_timeout_is_not_a_timeout() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("long-poll", &["started"], false);
    let mut slow_ok = instance(&prism.url, TOKEN);
    slow_ok.config.insert("timeout".into(), json!("1s"));
    let resource = provider()
        .machine_resource(
            &slow_ok,
            &decl(
                json!({ "app": app, "machine_id": ids[0], "interval": "1h", "wait_timeout": "2s" }),
            ),
        )
        .expect("resource");
    let _run = within("start", resource.start()).await.expect("adopted");
    // Two long-polls of 2s each, answered after the 1s `timeout`: no failed sync.
    until("a second long-poll", || {
        requests_matching(fake, &app, "/wait?state=stopped&timeout=2").len() >= 2
    })
    .await;
    let sync = resource.sync().and_then(|s| s.last_sync).expect("a sync");
    assert!(sync.ok, "{sync:?}");
    prism.assert_clean(&app);
}

#[tokio::test]
async fn validate_resource_names_every_key() {
    let (prism, _) = fly();
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
    let found = problems(instance(&prism.url, TOKEN), json!({ "machine_id": "e82a" })).await;
    assert!(
        found.iter().any(|p| p.starts_with("`app`: missing")),
        "{found:?}"
    );
    let found = problems(
        instance(&prism.url, TOKEN),
        json!({
            "app": "My_App", "machine_id": 7, "stop_mode": "nap",
            "wait_timeout": "2m", "colour": "red",
        }),
    )
    .await;
    for key in ["app", "machine_id", "stop_mode", "wait_timeout", "colour"] {
        assert!(
            found.iter().any(|p| p.starts_with(&format!("`{key}`"))),
            "{key}: {found:?}"
        );
    }
    let mut no_token = instance(&prism.url, TOKEN);
    no_token.token = None;
    let found = problems(no_token, json!({ "app": "a" })).await;
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("`token`") && p.contains(INSTANCE)),
        "{found:?}"
    );
    let fine = problems(
        instance(&prism.url, TOKEN),
        json!({ "app": "my-app", "machine_id": "e82a", "stop_mode": "suspend",
                "interval": "10s", "wait_timeout": "20s", "on_down": "keep" }),
    )
    .await;
    assert!(fine.is_empty(), "{fine:?}");
}

fn params(pairs: Value) -> Map<String, Value> {
    let Value::Object(map) = pairs else {
        panic!("object")
    };
    map
}

async fn run_command(
    prism_url: &str,
    resource: &ResourceDecl,
    id: &str,
    args: Value,
    dry_run: bool,
) -> Result<CommandResult, ProviderError> {
    run_confirmed(prism_url, resource, id, args, dry_run, false).await
}

/// [`run_command`], confirmed (`--yes`) or not.
async fn run_confirmed(
    prism_url: &str,
    resource: &ResourceDecl,
    id: &str,
    args: Value,
    dry_run: bool,
    yes: bool,
) -> Result<CommandResult, ProviderError> {
    let provider = provider();
    let spec = provider.command(id).expect("command").clone();
    let checked = validate(&spec, &params(args))?.with_confirmation(yes);
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
async fn every_command_dry_runs_changing_nothing_and_never_shows_the_token() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("dryrun", &["started", "started"], false);
    let one = decl(json!({ "app": app, "machine_id": ids[0] }));
    let all = decl(json!({ "app": app }));
    let update = json!({ "image": "registry.fly.io/x:v2", "env": "A=1", "size": "shared-cpu-2x" });
    let cases = [
        (
            &one,
            "update",
            update.clone(),
            vec!["POST", "GET", "POST", "DELETE"],
        ),
        (
            &all,
            "update",
            update,
            vec!["GET", "POST", "GET", "POST", "DELETE"],
        ),
        (&one, "restart", json!({}), vec!["POST"]),
        (&all, "restart", json!({}), vec!["GET", "POST"]),
        (&all, "scale", json!({ "count": 3 }), vec!["GET", "POST"]),
        (&all, "scale", json!({ "count": 1 }), vec!["GET", "DELETE"]),
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
    // Scaling up needs no confirmation: the command itself refuses to destroy without it.
    assert!(!provider.command("scale").expect("scale").confirm);
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
                .all(|r| r.url.starts_with(&prism.url) && r.url.contains(&app)),
            "{id}: {:#?}",
            result.requests
        );
        let text = serde_json::to_string(&result).expect("json");
        assert!(!text.contains(TOKEN), "{id}: {text}");
        assert!(text.contains("****"), "{id}: the token is shown masked");
    }
    let shown = run_command(
        &prism.url,
        &one,
        "update",
        json!({ "image": "registry.fly.io/x:v2" }),
        true,
    )
    .await
    .expect("dry-run");
    let update = &shown.requests[2];
    assert!(
        update
            .headers
            .iter()
            .any(|(k, v)| k == "fly-machine-lease-nonce" && v.contains("nonce")),
        "{update:?}"
    );
    let body = update.body.as_ref().expect("a body");
    assert_eq!(body["config"]["image"], "registry.fly.io/x:v2");
    assert!(body["current_version"].is_string(), "{body}");
    // Only scale read something (the list, to name the machines it would clone or destroy).
    let sent = fake.requests(&app);
    assert!(
        sent.iter()
            .all(|r| r.starts_with(&format!("GET /v1/apps/{app}/machines "))),
        "a dry-run sent more than a read: {sent:#?}"
    );
    assert_eq!(sent.len(), 2, "{sent:#?}");
    prism.assert_clean(&app);
}

#[tokio::test]
async fn scale_dry_runs_name_the_machines_and_only_destroying_needs_confirmation() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("scale-confirm", &["started", "stopped", "started"], false);
    let all = decl(json!({ "app": app }));
    // The dry-run of a scale down names the machines it would destroy: the stopped one first.
    let planned = run_command(&prism.url, &all, "scale", json!({ "count": 1 }), true)
        .await
        .expect("dry-run");
    assert_eq!(planned.data["destroy"].as_array().map(Vec::len), Some(2));
    assert_eq!(planned.data["destroy"][0], ids[1], "{:?}", planned.data);
    let deletes: Vec<&str> = planned
        .requests
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.url.as_str())
        .collect();
    assert!(
        deletes[0].ends_with(&format!("/machines/{}?force=true", ids[1])),
        "{deletes:?}"
    );
    assert!(
        planned
            .warnings
            .iter()
            .any(|w| w.contains("--yes") && w.contains(&ids[1])),
        "{:?}",
        planned.warnings
    );
    // The dry-run of a scale up says which machine would be cloned, how often.
    let planned = run_command(&prism.url, &all, "scale", json!({ "count": 5 }), true)
        .await
        .expect("dry-run");
    assert_eq!(planned.data["clone_from"], ids[0]);
    assert_eq!(planned.data["clones"], 2);
    assert!(planned.warnings.is_empty(), "{:?}", planned.warnings);
    // Down without confirmation: refused naming the machines, nothing destroyed.
    let refused = run_command(&prism.url, &all, "scale", json!({ "count": 1 }), false)
        .await
        .expect_err("needs --yes")
        .to_string();
    assert!(
        refused.contains("needs confirmation")
            && refused.contains(&ids[1])
            && refused.contains("--yes"),
        "{refused}"
    );
    assert!(requests_matching(fake, &app, "DELETE").is_empty());
    // Up without confirmation runs.
    let up = run_command(&prism.url, &all, "scale", json!({ "count": 4 }), false)
        .await
        .expect("scaled up unconfirmed");
    assert_eq!(up.data["created"].as_array().map(Vec::len), Some(1));
    // Down confirmed runs: the stopped machine and the clone (not started, or the newest).
    let down = run_confirmed(
        &prism.url,
        &all,
        "scale",
        json!({ "count": 2 }),
        false,
        true,
    )
    .await
    .expect("scaled down confirmed");
    let destroyed = down.data["destroyed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(destroyed.len(), 2, "{down:?}");
    assert!(destroyed.contains(&json!(ids[1])), "{down:?}");
    assert!(!destroyed.contains(&json!(ids[0])) && !destroyed.contains(&json!(ids[2])));
    prism.assert_clean(&app);
}

#[tokio::test]
async fn update_runs_under_a_lease_with_current_version_and_releases_it() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("update", &["started"], false);
    let id = &ids[0];
    let resource = decl(json!({ "app": app, "machine_id": id }));
    let before = fake.with(&app, |a| a.machines[0].version.clone());
    let result = run_command(
        &prism.url,
        &resource,
        "update",
        json!({ "image": "registry.fly.io/kinfra-test:v2", "env": "FEATURE=on", "size": "shared-cpu-2x" }),
        false,
    )
    .await
    .expect("updated");
    let after = fake.with(&app, |a| a.machines[0].clone());
    assert_ne!(after.version, before);
    assert_eq!(result.data["updated"][0]["version"], json!(after.version));
    assert_eq!(after.config["image"], "registry.fly.io/kinfra-test:v2");
    assert_eq!(
        after.config["env"],
        json!({ "APP_ENV": "test", "FEATURE": "on" })
    );
    assert_eq!(after.config["guest"]["cpus"], 2);
    assert_eq!(
        after.config["services"][0]["internal_port"], 8080,
        "the rest kept"
    );
    assert!(after.lease.is_none(), "the lease was not released");
    let seen = fake.requests(&app);
    let lease = requests_matching(fake, &app, "POST /v1/apps");
    assert!(lease[0].contains("/lease"), "{seen:#?}");
    let update = seen
        .iter()
        .find(|r| r.starts_with(&format!("POST /v1/apps/{app}/machines/{id} ")))
        .expect("the update");
    assert!(
        update.contains(&format!("\"current_version\":\"{before}\"")),
        "{update}"
    );
    assert!(
        update.contains("[nonce-"),
        "sent without the lease's nonce: {update}"
    );
    let release = requests_matching(fake, &app, "DELETE");
    assert_eq!(release.len(), 1);
    assert!(release[0].contains("/lease") && release[0].contains("[nonce-"));
    prism.assert_clean(&app);
}

#[tokio::test]
async fn a_409_on_update_is_reported_with_its_reason_never_retried_and_the_lease_released() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("conflict", &["started"], false);
    let id = &ids[0];
    let resource = decl(json!({ "app": app, "machine_id": id }));
    // Fly refuses the update itself (the pattern ends at the machine's path: not the lease).
    fake.inject(
        &app,
        &format!("POST /v1/apps/{app}/machines/{id}$"),
        Reply::json(
            409,
            r#"{"error":"machine is being replaced by another deploy"}"#,
        ),
        1,
    );
    let error = run_command(
        &prism.url,
        &resource,
        "update",
        json!({ "image": "registry.fly.io/kinfra-test:v3" }),
        false,
    )
    .await
    .expect_err("a conflict");
    let text = error.to_string();
    assert!(text.contains("refused (409 Conflict)"), "{text}");
    assert!(
        text.contains("machine is being replaced by another deploy"),
        "{text}"
    );
    assert!(text.contains("Not retried"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    let seen = fake.requests(&app);
    let updates = seen
        .iter()
        .filter(|r| r.starts_with(&format!("POST /v1/apps/{app}/machines/{id} ")))
        .count();
    assert_eq!(updates, 1, "a 409 was retried: {seen:#?}");
    let releases = requests_matching(fake, &app, "DELETE");
    assert_eq!(releases.len(), 1, "{seen:#?}");
    assert!(releases[0].contains("/lease") && releases[0].contains("[nonce-"));
    assert!(
        fake.with(&app, |a| a.machines[0].lease.is_none()),
        "the lease was kept"
    );
    assert_eq!(
        fake.with(&app, |a| a.machines[0].config["image"].clone()),
        "registry.fly.io/kinfra-test:v1"
    );
    prism.assert_clean(&app);
}

#[tokio::test]
async fn a_lease_held_elsewhere_or_a_stale_version_is_a_409_reported_not_retried() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("stale", &["started"], false);
    let id = ids[0].clone();
    let resource = decl(json!({ "app": app, "machine_id": id }));
    // Another client holds a lease: the update cannot take one.
    fake.with(&app, |a| {
        a.machines[0].lease = Some((
            "nonce-someone-else".into(),
            std::time::Instant::now() + Duration::from_secs(60),
        ))
    });
    let error = run_command(
        &prism.url,
        &resource,
        "update",
        json!({ "env": "A=1" }),
        false,
    )
    .await
    .expect_err("leased elsewhere")
    .to_string();
    assert!(error.contains("leased by someone else (409"), "{error}");
    assert!(error.contains(&id), "{error}");
    assert_eq!(requests_matching(fake, &app, "/lease").len(), 1, "retried");
    // The version moves under kinfra between its read and its update: Fly answers 409.
    fake.with(&app, |a| a.machines[0].lease = None);
    let moved = fake.with(&app, |a| a.machines[0].version.clone());
    fake.inject(
        &app,
        &format!("GET /v1/apps/{app}/machines/{id}$"),
        Reply::json(
            200,
            &json!({ "id": id, "state": "started", "version": "01JOLDVERSION", "config": {} })
                .to_string(),
        ),
        1,
    );
    let error = run_command(
        &prism.url,
        &resource,
        "update",
        json!({ "env": "A=1" }),
        false,
    )
    .await
    .expect_err("stale version")
    .to_string();
    assert!(error.contains("refused (409 Conflict)"), "{error}");
    assert!(error.contains("01JOLDVERSION"), "{error}");
    assert!(error.contains(&moved), "Fly's reason is reported: {error}");
    let seen = fake.requests(&app);
    let updates = seen
        .iter()
        .filter(|r| r.starts_with(&format!("POST /v1/apps/{app}/machines/{id} ")))
        .count();
    assert_eq!(updates, 1, "a 409 was retried: {seen:#?}");
    assert!(
        fake.with(&app, |a| a.machines[0].lease.is_none()),
        "the lease was kept"
    );
    assert_eq!(fake.with(&app, |a| a.machines[0].version.clone()), moved);
    // Fly's spec declares no 409 for creating a lease (the live API answers one when the
    // machine is leased elsewhere): that answer alone is Prism's "unmatched status" warning.
    assert_clean_but(prism, &app, &[409]);
}

#[tokio::test]
async fn restart_and_scale_act_on_the_apps_machines() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("scale", &["started"], false);
    let one = decl(json!({ "app": app, "machine_id": ids[0] }));
    let restarted = run_command(&prism.url, &one, "restart", json!({}), false)
        .await
        .expect("restarted");
    assert_eq!(restarted.data["restarted"], json!([ids[0]]));
    assert_eq!(requests_matching(fake, &app, "/restart").len(), 1);
    // A whole app restarts its started machines only (Fly refuses the others).
    let (whole_app, whole) = fake.app("restart-app", &["started", "stopped"], false);
    let everything = decl(json!({ "app": whole_app }));
    let restarted = run_command(&prism.url, &everything, "restart", json!({}), false)
        .await
        .expect("restarted");
    assert_eq!(restarted.data["restarted"], json!([whole[0]]));
    prism.assert_clean(&whole_app);

    let scaled = run_command(&prism.url, &one, "scale", json!({ "count": 3 }), false)
        .await
        .expect("scaled up");
    assert_eq!(scaled.data["created"].as_array().map(Vec::len), Some(2));
    let machines = fake.with(&app, |a| a.machines.clone());
    assert_eq!(machines.len(), 3);
    assert!(
        machines.iter().all(|m| m.config == machines[0].config),
        "clones of the resource's machine"
    );
    // Scaling down destroys others, never the resource's own machine.
    let down = run_confirmed(
        &prism.url,
        &one,
        "scale",
        json!({ "count": 1 }),
        false,
        true,
    )
    .await
    .expect("scaled down");
    assert_eq!(down.data["destroyed"].as_array().map(Vec::len), Some(2));
    let left: Vec<String> = fake.with(&app, |a| {
        a.machines
            .iter()
            .filter(|m| m.state != "destroyed" && m.state != "destroying")
            .map(|m| m.id.clone())
            .collect()
    });
    assert_eq!(left, [ids[0].clone()]);
    let refused = run_command(&prism.url, &one, "scale", json!({ "count": 0 }), false)
        .await
        .expect_err("its own machine stays")
        .to_string();
    assert!(refused.contains(&ids[0]), "{refused}");
    prism.assert_clean(&app);
}

#[tokio::test]
async fn an_apps_update_goes_machine_by_machine_each_under_its_own_lease() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("appupdate", &["started", "stopped"], false);
    let all = decl(json!({ "app": app }));
    let result = run_command(&prism.url, &all, "update", json!({ "env": "A=1" }), false)
        .await
        .expect("updated");
    let updated: Vec<&str> = result.data["updated"]
        .as_array()
        .expect("updated")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert_eq!(updated, [ids[0].as_str(), ids[1].as_str()]);
    fake.with(&app, |a| {
        for m in &a.machines {
            assert_eq!(m.config["env"]["A"], "1", "{}", m.id);
            assert!(m.lease.is_none(), "{} kept its lease", m.id);
        }
    });
    for id in &ids {
        let leases = requests_matching(fake, &app, &format!("{id}/lease"));
        assert_eq!(leases.len(), 2, "acquire and release of {id}: {leases:?}");
    }
    prism.assert_clean(&app);
}

#[tokio::test]
async fn secrets_echoed_by_the_api_stay_out_of_errors_logs_and_sync() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("secrets", &["started"], false);
    let id = &ids[0];
    let resource = provider()
        .with_retry(single())
        .machine_resource(
            &instance(&prism.url, TOKEN),
            &decl(json!({ "app": app, "machine_id": id, "interval": "1h", "wait_timeout": "1s" })),
        )
        .expect("resource");
    // The long-polls sync (a long interval: no list read hides the failed one).
    within("start", resource.start()).await.expect("adopted");
    let echo = |status: u16| {
        Reply::json(
            status,
            &json!({ "error": format!("bad token Bearer {TOKEN}") }).to_string(),
        )
    };
    fake.inject(&app, "/wait?", echo(500), 1);
    until("a failed sync", || {
        resource
            .sync()
            .and_then(|s| s.last_sync)
            .is_some_and(|l| !l.ok)
    })
    .await;
    fake.inject(
        &app,
        &format!("POST /v1/apps/{app}/machines/{id}$"),
        echo(409),
        1,
    );
    let error = run_command(
        &prism.url,
        &decl(json!({ "app": app, "machine_id": id })),
        "update",
        json!({ "image": "x:v2" }),
        false,
    )
    .await
    .expect_err("a conflict")
    .to_string();
    let mut shown = format!(
        "{error}\n{:?}\n{:?}\n",
        resource.sync(),
        resource.reported_state()
    );
    for line in within("logs", resource.logs(1000)).await.expect("logs") {
        shown.push_str(&line.text);
        shown.push('\n');
    }
    assert!(!shown.contains(TOKEN), "the token is shown:\n{shown}");
    assert!(shown.contains("****"), "{shown}");
    assert_clean_but(prism, &app, &[500]);
}
