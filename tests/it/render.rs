//! The `render` provider through `kinfra runtime up`, against the stateful Render fake behind
//! Prism (Render's own spec, `crates/kinfra-cloud/specs/render/`): a suspended service is
//! resumed at up and followed to `running`, its logs reach `runtime logs` and the foreground
//! output once each, every command runs with and without `--dry-run` (token masked), a
//! suspend outside kinfra shows `stopped` (no restart), `runtime stop`/`start` suspend and
//! resume, `on_down = "keep"` leaves it alone at down and `"pause"` suspends it, a service
//! suspended by Render for billing shows `failed` with the reason, a refused token fails naming
//! the instance; 429 with and without Retry-After, a 5xx burst, an answer slower than the
//! instance's `timeout` and malformed JSON show in last_sync with the state kept, an unknown
//! service and an unreachable API fail naming them; a canceled deploy over a live one keeps
//! it running; the `start`/`stop` commands too; the token shows nowhere.

#[allow(dead_code)]
#[path = "../../crates/kinfra-cloud/tests/support/render_fake.rs"]
pub(crate) mod render_fake;

// The harness, included once in main.rs; the fake reaches it as `super::`.
use crate::{fake_http, fault_script, prism};

use crate::support::{Project, Up, stderr, stdout};
use render_fake::{TOKEN, render};
use serde_json::Value;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(40);

/// A project with one Render resource `web` on `service_id`, the API at `base`.
fn project(base: &str, service_id: &str, extra: &str) -> Project {
    project_with(base, "", service_id, extra)
}

/// The same with `instance` added to the provider instance's table (`timeout = ...`).
fn project_with(base: &str, instance: &str, service_id: &str, extra: &str) -> Project {
    Project::with_config(&format!(
        "[project]\nname = \"rnd\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.render]\ntoken = \"{TOKEN}\"\nbase_url = \"{base}\"\n{instance}\
         [resources.web]\nprovider = \"render\"\nservice_id = \"{service_id}\"\n\
         interval = \"200ms\"\n{extra}"
    ))
}

/// Waits (bounded) until `web`'s status entry satisfies `cond`; the failure shows the status
/// and the runtime's output.
fn wait_web(p: &Project, up: &Up, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let status = crate::cli::status_json(p);
        let web = status["services"]["web"].clone();
        if cond(&web) {
            return web;
        }
        if std::time::Instant::now() > deadline {
            panic!("never {what}: {status:#}\n{}", up.lines().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Answers the next `times` reads of service `id` with `reply` and waits (bounded) until
/// last_sync shows an error containing `shown` while `web` stays running on its live deploy
/// (no restart), then until a good sync clears it.
fn fault_shows_in_last_sync(
    p: &Project,
    up: &Up,
    fake: &render_fake::RenderFake,
    id: &str,
    (reply, times): (crate::fake_http::Reply, usize),
    shown: &str,
) {
    fake.inject(id, &format!("GET /services/{id}$"), reply, times);
    let seen = wait_web(p, up, shown, |w| {
        w["last_sync"]["ok"] == false
            && w["last_sync"]["error"]
                .as_str()
                .is_some_and(|e| e.contains(shown))
    });
    assert_eq!(seen["state"], "running", "kept: {seen}");
    assert_eq!(seen["provider_state"], "live", "kept: {seen}");
    assert_eq!(seen["restarts"], 0, "not a crash: {seen}");
    wait_web(p, up, "last_sync ok again", |w| {
        w["last_sync"]["ok"] == true
    });
}

/// Runs `kinfra resource web ARGS... --json`: the exit code and the result (or stderr).
fn command(p: &Project, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut all = vec!["resource", "web"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = p.run(&all);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!text.contains(TOKEN), "the token shows: {text}");
    let value = serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null);
    (out.status.code(), value, text)
}

#[test]
fn a_suspended_service_resumes_at_up_its_logs_and_commands_work_and_keep_leaves_it_at_down() {
    let (prism, fake) = render();
    let id = fake.service("rootlife", Some("live"), &["user"]);
    let p = project(&prism.url, &id, "");
    let mut up = p.up(&[], &[]);
    let starting = wait_web(&p, &up, "web starting with the resume's progress", |w| {
        w["state"] == "starting"
            && w["status_message"]
                .as_str()
                .is_some_and(|m| m.contains("resume requested"))
    });
    assert_eq!(starting["kind"], "render", "{starting}");
    let running = wait_web(&p, &up, "web running and healthy", |w| {
        w["state"] == "running" && w["health"] == "healthy"
    });
    assert_eq!(running["provider_state"], "live", "{running}");
    assert_eq!(running["last_sync"]["ok"], true, "{running}");
    assert_eq!(fake.count(&id, "/resume"), 1, "{:?}", fake.requests(&id));

    // The service's logs reach `runtime logs` and the foreground output, each line once.
    fake.log(&id, "GET /healthz 200 rnd-line-one", "info", "request");
    fake.log(&id, "worker booted rnd-line-two", "info", "app");
    fake.log(&id, "boom rnd-line-three", "error", "app");
    for needle in ["rnd-line-one", "rnd-line-two", "rnd-line-three"] {
        up.wait_for_line(LIMIT, needle);
    }
    // A few more polls: nothing shown twice.
    std::thread::sleep(Duration::from_millis(800));
    let logs = stdout(&p.run(&["runtime", "logs", "web", "-n", "500"]));
    for needle in ["rnd-line-one", "rnd-line-two", "rnd-line-three"] {
        assert_eq!(logs.matches(needle).count(), 1, "{needle} in:\n{logs}");
        let shown = up.lines().iter().filter(|l| l.contains(needle)).count();
        assert_eq!(shown, 1, "{needle} in the foreground output");
    }
    assert!(logs.contains("[request] GET /healthz 200"), "{logs}");

    // Every command with --dry-run sends nothing and shows the exact request, token masked.
    let posts_before = fake.count(&id, "POST");
    for (args, method, path, body) in [
        (
            vec!["deploy", "--param", "clear_cache=true"],
            "POST",
            format!("/services/{id}/deploys"),
            serde_json::json!({"clearCache": "clear"}),
        ),
        (
            vec!["cancel-deploy", "--param", "deploy_id=dep-x1"],
            "POST",
            format!("/services/{id}/deploys/dep-x1/cancel"),
            Value::Null,
        ),
        (
            vec!["restart"],
            "POST",
            format!("/services/{id}/restart"),
            Value::Null,
        ),
        (
            vec!["scale", "--param", "instances=2"],
            "POST",
            format!("/services/{id}/scale"),
            serde_json::json!({"numInstances": 2}),
        ),
        (
            vec!["list-deploys"],
            "GET",
            format!("/services/{id}/deploys"),
            Value::Null,
        ),
    ] {
        let mut dry = args.clone();
        dry.push("--dry-run");
        let (code, result, text) = command(&p, &dry);
        assert_eq!(code, Some(0), "{text}");
        assert_eq!(result["dry_run"], true, "{text}");
        let request = &result["requests"][0];
        assert_eq!(request["method"], method, "{text}");
        assert_eq!(
            request["url"].as_str(),
            Some(format!("{}{path}", prism.url).as_str()),
            "{text}"
        );
        assert_eq!(request["body"], body, "{text}");
        assert!(text.contains("****"), "the token is masked: {text}");
    }
    assert_eq!(
        fake.count(&id, "POST"),
        posts_before,
        "a dry-run sent something"
    );

    // And for real.
    let (code, result, text) = command(&p, &["scale", "--param", "instances=2"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(result["success"], true, "{text}");
    assert_eq!(fake.with(&id, |s| s.instances), 2);
    let (code, _, text) = command(&p, &["restart"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(fake.with(&id, |s| s.restarts), 1);
    fake.with(&id, |s| s.deploy_time = Duration::from_secs(60));
    let (code, deployed, text) = command(&p, &["deploy", "--param", "commit_id=c0ffee1"]);
    assert_eq!(code, Some(0), "{text}");
    let deploy_id = deployed["operation"]
        .as_str()
        .expect("deploy id")
        .to_owned();
    wait_web(&p, &up, "the deploy in progress shows", |w| {
        w["provider_state"] == "build_in_progress"
    });
    let (code, listed, text) = command(&p, &["list-deploys"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        listed["data"][0]["deploy"]["id"],
        deploy_id.as_str(),
        "{text}"
    );
    let (code, canceled, text) = command(
        &p,
        &[
            "cancel-deploy",
            "--param",
            &format!("deploy_id={deploy_id}"),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(canceled["data"]["status"], "canceled", "{text}");
    // The resume's deploy still serves under the canceled one: running, both named.
    let resumed = fake.with(&id, |s| {
        s.deploys
            .iter()
            .find(|d| d.status == "live")
            .map(|d| d.id.clone())
    });
    let resumed = resumed.expect("the resume's deploy is live");
    let serving = wait_web(&p, &up, "web running on the earlier deploy", |w| {
        w["status_message"] == format!("deploy {deploy_id} canceled; {resumed} live")
    });
    assert_eq!(serving["state"], "running", "{serving}");
    assert_eq!(serving["health"], "healthy", "{serving}");
    assert_eq!(serving["provider_state"], "canceled", "{serving}");
    // A missing parameter is an input error, named, before anything is sent.
    let (code, _, text) = command(&p, &["cancel-deploy"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("deploy_id"), "{text}");

    // Suspended outside kinfra: stopped, not restarted, nothing sent.
    fake.set_latest(&id, "live");
    wait_web(&p, &up, "web running again", |w| w["state"] == "running");
    let posts = fake.count(&id, "POST");
    fake.suspend(&id, &["user"]);
    let stopped = wait_web(&p, &up, "web stopped", |w| w["state"] == "stopped");
    let message = stopped["status_message"].as_str().unwrap_or_default();
    assert!(message.contains("suspended outside kinfra"), "{stopped}");
    assert_eq!(stopped["provider_state"], "suspended (user)", "{stopped}");
    assert_eq!(stopped["restarts"], 0, "{stopped}");
    assert_eq!(fake.count(&id, "POST"), posts, "{:?}", fake.requests(&id));

    // Resumed outside kinfra: taken up again. `runtime down` (keep) sends nothing.
    fake.unsuspend(&id);
    wait_web(&p, &up, "web running after the outside resume", |w| {
        w["state"] == "running"
    });
    let status = stdout(&p.run(&["runtime", "status", "--json"]));
    assert!(!status.contains(TOKEN), "{status}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert!(!up.lines().join("\n").contains(TOKEN));
    assert_eq!(
        fake.count(&id, "/suspend"),
        0,
        "keep: {:?}",
        fake.requests(&id)
    );
    assert!(!fake.suspended(&id));
    prism.assert_clean(&id);
}

#[test]
fn runtime_stop_suspends_start_resumes_and_on_down_pause_suspends_at_down() {
    let (prism, fake) = render();
    let id = fake.service("rootpause", Some("live"), &[]);
    let p = project(&prism.url, &id, "on_down = \"pause\"\n");
    let mut up = p.up(&[], &[]);
    wait_web(&p, &up, "web running", |w| w["state"] == "running");
    assert_eq!(fake.count(&id, "POST"), 0, "a live service is adopted");

    let out = p.run(&["runtime", "stop", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stopped = wait_web(&p, &up, "web stopped", |w| w["state"] == "stopped");
    assert_eq!(stopped["provider_state"], "suspended (user)", "{stopped}");
    assert!(fake.suspended(&id));
    assert_eq!(fake.count(&id, "/suspend"), 1);

    let out = p.run(&["runtime", "start", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_web(&p, &up, "web running after the resume", |w| {
        w["state"] == "running" && w["health"] == "healthy"
    });
    assert_eq!(fake.count(&id, "/resume"), 1);

    // The `stop` and `start` commands: a dry-run shows the exact request and sends nothing;
    // for real they suspend and resume the service (seen by the runtime as outside changes).
    for (name, tail) in [("stop", "/suspend"), ("start", "/resume")] {
        let sent = fake.count(&id, tail);
        let (code, result, text) = command(&p, &[name, "--dry-run"]);
        assert_eq!(code, Some(0), "{text}");
        assert_eq!(result["requests"][0]["method"], "POST", "{text}");
        assert_eq!(
            result["requests"][0]["url"].as_str(),
            Some(format!("{}/services/{id}{tail}", prism.url).as_str()),
            "{text}"
        );
        assert!(text.contains("****"), "the token is masked: {text}");
        assert_eq!(fake.count(&id, tail), sent, "a dry-run sent {tail}");
        let (code, result, text) = command(&p, &[name]);
        assert_eq!(code, Some(0), "{text}");
        assert_eq!(result["success"], true, "{text}");
        assert_eq!(fake.count(&id, tail), sent + 1, "{tail} sent once");
        if name == "stop" {
            wait_web(&p, &up, "web stopped by the stop command", |w| {
                w["state"] == "stopped"
            });
        } else {
            wait_web(&p, &up, "web running after the start command", |w| {
                w["state"] == "running" && w["health"] == "healthy"
            });
        }
    }

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_eq!(fake.count(&id, "/suspend"), 3, "{:?}", fake.requests(&id));
    assert!(fake.suspended(&id), "suspended by the time kinfra exits");
    prism.assert_clean(&id);
}

#[test]
fn a_service_suspended_by_render_for_billing_shows_failed_with_the_reason() {
    let (prism, fake) = render();
    let id = fake.service("rootbilling", Some("live"), &["billing"]);
    let p = project(&prism.url, &id, "");
    let mut up = p.up(&[], &[]);
    let failed = wait_web(&p, &up, "web failed", |w| w["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("billing") && message.contains(&id),
        "{failed}"
    );
    assert_eq!(failed["provider_state"], "suspended (billing)", "{failed}");
    assert_eq!(failed["restarts"], 0, "not restarted: {failed}");
    assert_eq!(fake.count(&id, "POST"), 0, "{:?}", fake.requests(&id));
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    prism.assert_clean(&id);
}

#[test]
fn a_refused_token_fails_the_resource_naming_the_instance() {
    let (prism, fake) = render();
    let id = fake.service("roottoken", Some("live"), &[]);
    let p = Project::with_config(&format!(
        "[project]\nname = \"rnd\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.rnd-prod]\nprovider = \"render\"\ntoken = \"rnd_revoked_9x\"\n\
         base_url = \"{}\"\n\
         [resources.web]\nprovider = \"rnd-prod\"\nservice_id = \"{id}\"\ninterval = \"200ms\"\n",
        prism.url
    ));
    let mut up = p.up(&[], &[]);
    let failed = wait_web(&p, &up, "web failed", |w| w["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`rnd-prod`") && message.contains("401"),
        "{failed}"
    );
    assert_eq!(
        failed["restarts"], 0,
        "a refused token is not retried: {failed}"
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert!(!up.lines().join("\n").contains("rnd_revoked_9x"));
    prism.assert_clean(&id);
}

#[test]
fn providers_show_render_lists_every_command_with_its_parameters() {
    let p = Project::new();
    let out = p.run(&["providers", "show", "render", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let text = shown.to_string();
    let commands = shown["commands"].as_array().expect("commands");
    let ids: Vec<&str> = commands.iter().filter_map(|c| c["id"].as_str()).collect();
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
        ],
        "{text}"
    );
    let params = |id: &str| -> Vec<String> {
        commands
            .iter()
            .find(|c| c["id"] == id)
            .and_then(|c| c["params"].as_array())
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(params("deploy"), ["clear_cache", "commit_id", "image_url"]);
    assert_eq!(params("cancel-deploy"), ["deploy_id"]);
    assert_eq!(params("scale"), ["instances"]);
    assert!(params("restart").is_empty());
    assert!(commands.iter().all(|c| c["dry_run"] == true), "{text}");
    let out = p.run(&["providers", "show", "render"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let human = stdout(&out);
    for word in [
        "deploy",
        "cancel-deploy",
        "restart",
        "scale",
        "service_id",
        "operation_timeout",
        "instances",
    ] {
        assert!(human.contains(word), "{word} missing:\n{human}");
    }
}

#[test]
fn faults_show_in_last_sync_and_keep_the_state_and_an_unknown_service_fails_naming_it() {
    let (prism, fake) = render();
    let id = fake.service("rootfaults", Some("live"), &[]);
    let p = project(&prism.url, &id, "");
    let mut up = p.up(&[], &[]);
    wait_web(&p, &up, "web running", |w| w["state"] == "running");
    // A burst of 500s, then 429 with and without Retry-After (a rate limit is not a crash):
    // last_sync shows each, the state stays running, then it clears.
    let limited = || render_fake::error(429, "Rate limit exceeded");
    for (fault, shown) in [
        (
            (render_fake::error(500, "Internal Server Error"), 3),
            "HTTP 500",
        ),
        ((limited().header("Retry-After", "1"), 1), "429"),
        ((limited(), 1), "429"),
    ] {
        fault_shows_in_last_sync(&p, &up, fake, &id, fault, shown);
    }
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    prism.assert_clean(&id);

    // A service id the account does not have: failed, naming it, not restarted.
    let missing = "srv-rootmissing0";
    let p = project(&prism.url, missing, "");
    let mut up = p.up(&[], &[]);
    let failed = wait_web(&p, &up, "web failed", |w| w["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains(missing) && message.contains("404"),
        "{failed}"
    );
    assert_eq!(failed["restarts"], 0, "{failed}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    prism.assert_clean(missing);
}

#[test]
fn a_slow_answer_and_malformed_json_show_in_last_sync_and_an_unreachable_api_fails() {
    // Slower than the instance's `timeout`: last_sync says so, the state stays.
    let (prism, fake) = render();
    let id = fake.service("rootslow", Some("live"), &[]);
    let p = project_with(&prism.url, "timeout = \"1s\"\n", &id, "");
    let mut up = p.up(&[], &[]);
    wait_web(&p, &up, "web running", |w| {
        w["state"] == "running" && w["last_sync"]["ok"] == true
    });
    let slow = render_fake::error(500, "too late").delayed(Duration::from_secs(3));
    fault_shows_in_last_sync(&p, &up, fake, &id, (slow, 1), "no answer within 1s");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert!(!up.lines().join("\n").contains(TOKEN));
    prism.assert_clean(&id);

    // Malformed JSON (Prism would answer it with its own error: straight to the fake).
    let id = fake.service("rootmalformed", Some("live"), &[]);
    let p = project(&prism.fake_url, &id, "");
    let mut up = p.up(&[], &[]);
    wait_web(&p, &up, "web running", |w| w["state"] == "running");
    let malformed = crate::fake_http::Reply::json(200, r#"{"id": "srv-"#);
    fault_shows_in_last_sync(&p, &up, fake, &id, (malformed, 2), "malformed JSON");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());

    // Nothing listens on port 1: failed for good, naming the instance.
    let p = project("http://127.0.0.1:1", "srv-rootunreachable", "");
    let mut up = p.up(&[], &[]);
    let failed = wait_web(&p, &up, "web failed", |w| w["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(message.contains("`render`"), "{failed}");
    assert_eq!(failed["restarts"], 0, "{failed}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert!(!up.lines().join("\n").contains(TOKEN));
    let status = stdout(&p.run(&["runtime", "status", "--json"]));
    assert!(!status.contains(TOKEN), "{status}");
}

#[test]
fn plan_shows_the_resume_a_suspended_service_would_get_and_sends_nothing() {
    let (prism, fake) = render();
    let id = fake.service("rootplan", Some("live"), &["user"]);
    let p = project(&prism.url, &id, "");
    let out = p.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains(TOKEN), "{text}");
    let plan: Value = serde_json::from_str(&text).expect("JSON plan");
    let web = plan["resources"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "web"))
        .cloned()
        .unwrap_or_else(|| panic!("web not in the plan: {plan}"));
    assert_eq!(web["kind"], "render", "{web}");
    assert_eq!(web["action"], "resume", "{web}");
    assert_eq!(web["calls"][0]["method"], "POST", "{web}");
    assert_eq!(
        web["calls"][0]["url"].as_str(),
        Some(format!("{}/services/{id}/resume", prism.url).as_str()),
        "{web}"
    );
    assert_eq!(fake.count(&id, "POST"), 0, "plan sent something");
    assert!(fake.suspended(&id));
    prism.assert_clean(&id);

    // Suspended by Render: no resume is planned, the reason is.
    let billing = fake.service("rootplanbilling", Some("live"), &["billing"]);
    let p = project(&prism.url, &billing, "");
    let out = p.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Value = serde_json::from_str(&stdout(&out)).expect("JSON plan");
    let web = &plan["resources"][0];
    assert_eq!(web["name"], "web", "{plan}");
    let note = web["calls"][0]["note"].as_str().unwrap_or_default();
    assert!(note.contains("billing") && note.contains(&billing), "{web}");
    assert_eq!(fake.count(&billing, "POST"), 0);
    prism.assert_clean(&billing);
}
