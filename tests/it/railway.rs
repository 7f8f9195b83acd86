//! The `railway` provider through `kinfra runtime up`, against the stateful Railway GraphQL
//! fake with graphql-js in front (every query and its variables validated against
//! `crates/kinfra-cloud/specs/railway/schema.json`, see `railway_fake.rs`): a stopped service
//! is restarted and runs, its build and deploy logs reach `runtime logs`, `runtime stop`
//! stops the deployment, SLEEPING outside kinfra shows sleeping and waking is taken up again,
//! CRASHED goes through kinfra's restart policy, `runtime down` (keep) sends nothing; every
//! command with and without `--dry-run`; a refused token, a 5xx burst, an unknown service,
//! an unreachable API, 429 with and without Retry-After, malformed JSON and an answer slower
//! than the instance's `timeout`; the token shows nowhere.

#[allow(dead_code)]
#[path = "../../crates/kinfra-cloud/tests/support/railway_fake.rs"]
pub(crate) mod railway_fake;

// The fake HTTP server, included once in main.rs; the fake reaches it as `super::`.
use crate::{fake_http, fault_script};

use crate::support::{Project, Up, http_get, stderr, stdout, wait_for};
use railway_fake::{ACCOUNT_TOKEN, RailwayFake, railway};
use serde_json::Value;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// A project with one Railway resource `api` on the service `ids`, the API at `base`.
fn project(base: &str, token: &str, ids: &(String, String), extra: &str) -> Project {
    project_with(base, token, "", ids, extra)
}

/// The same with `instance` added to the provider instance's table (`timeout = ...`).
fn project_with(
    base: &str,
    token: &str,
    instance: &str,
    ids: &(String, String),
    extra: &str,
) -> Project {
    Project::with_config(&format!(
        "[project]\nname = \"rw\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.rw]\nprovider = \"railway\"\ntoken = \"{token}\"\nbase_url = \"{base}\"\n{instance}\
         [resources.api]\nprovider = \"rw\"\nservice_id = \"{}\"\nenvironment_id = \"{}\"\n\
         interval = \"200ms\"\n{extra}",
        ids.0, ids.1
    ))
}

/// `/__status__`'s entry of `api`, and the whole body.
fn api(up: &Up) -> Option<(Value, String)> {
    let (code, body) = http_get(&up.dashboard_addr(), "/__status__").ok()?;
    let status: Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| (status["services"]["api"].clone(), body))
}

fn wait_api(up: &Up, what: &str, cond: impl Fn(&Value) -> bool) -> (Value, String) {
    wait_for(LIMIT, what, || api(up).filter(|(d, _)| cond(d)))
}

fn count(fake: &RailwayFake, service: &str, operation: &str) -> usize {
    fake.requests(service)
        .iter()
        .filter(|l| l.starts_with(&format!("{operation} ")))
        .count()
}

fn assert_no_token(up: &Up, p: &Project, body: &str) {
    let shown = format!(
        "{body}\n{}\n{}\n{}",
        up.lines().join("\n"),
        stdout(&p.run(&["runtime", "logs", "api", "-n", "500"])),
        stdout(&p.run(&["runtime", "status", "--json"])),
    );
    assert!(!shown.contains(ACCOUNT_TOKEN), "the token shows:\n{shown}");
}

#[test]
fn a_stopped_service_is_restarted_logs_stops_sleeps_crashes_and_is_kept_at_down() {
    let fake = railway();
    let ids = fake.service("rootlife", Some("SUCCESS"));
    let service = ids.0.clone();
    fake.set_latest(&service, "SUCCESS", true);
    let p = project(&fake.url(), ACCOUNT_TOKEN, &ids, "");
    let mut up = p.up(&[], &[]);
    let (running, _) = wait_api(&up, "api running", |d| d["state"] == "running");
    assert_eq!(running["kind"], "railway", "{running}");
    assert_eq!(running["provider_state"], "SUCCESS", "{running}");
    let message = running["status_message"].as_str().unwrap_or_default();
    assert!(message.contains("rootlife-api.up.railway.app"), "{running}");
    assert_eq!(count(fake, &service, "RailwayDeploymentRestart"), 1);

    // Build and deploy logs arrive in `runtime logs`.
    fake.deploy_log(&service, "GET /healthz 200", "info");
    wait_for(LIMIT, "the logs in runtime logs", || {
        let logs = stdout(&p.run(&["runtime", "logs", "api", "-n", "500"]));
        (logs.contains("[deploy] GET /healthz 200")
            && logs.contains("[build] build of the first deployment"))
        .then_some(())
    });

    // runtime stop: deploymentStop, stopped.
    let out = p.run(&["runtime", "stop", "api"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (stopped, _) = wait_api(&up, "api stopped", |d| d["state"] == "stopped");
    assert_eq!(count(fake, &service, "RailwayDeploymentStop"), 1);
    assert!(
        fake.latest(&service).is_some_and(|d| d.stopped),
        "{stopped}"
    );

    // runtime start: restarted again.
    let out = p.run(&["runtime", "start", "api"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_api(&up, "api running again", |d| d["state"] == "running");
    assert_eq!(count(fake, &service, "RailwayDeploymentRestart"), 2);

    // SLEEPING outside kinfra: sleeping, no restart; woken outside: taken up again.
    fake.set_latest(&service, "SLEEPING", false);
    let (sleeping, _) = wait_api(&up, "api sleeping", |d| d["state"] == "sleeping");
    assert_eq!(sleeping["provider_state"], "SLEEPING", "{sleeping}");
    assert_eq!(sleeping["restarts"], 0, "{sleeping}");
    fake.set_latest(&service, "SUCCESS", false);
    let (woken, _) = wait_api(&up, "api running after waking", |d| d["state"] == "running");
    assert_eq!(woken["restarts"], 0, "{woken}");
    assert_eq!(
        count(fake, &service, "RailwayDeploymentRestart"),
        2,
        "nothing sent"
    );

    // CRASHED: kinfra's restart policy restarts the deployment.
    fake.set_latest(&service, "CRASHED", false);
    let (restarted, body) = wait_api(&up, "api restarted after the crash", |d| {
        d["state"] == "running" && d["restarts"].as_u64().is_some_and(|n| n >= 1)
    });
    assert_eq!(
        count(fake, &service, "RailwayDeploymentRestart"),
        3,
        "{restarted}"
    );
    let logs = stdout(&p.run(&["runtime", "logs", "api", "-n", "500"]));
    assert!(logs.contains("CRASHED"), "{logs}");

    assert_no_token(&up, &p, &body);
    // runtime down with the default on_down = keep: nothing is sent.
    let stops = count(fake, &service, "RailwayDeploymentStop");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_eq!(
        count(fake, &service, "RailwayDeploymentStop"),
        stops,
        "keep"
    );
    assert!(
        fake.latest(&service)
            .is_some_and(|d| !d.stopped && d.status == "SUCCESS")
    );
    fake.assert_clean(&service);
}

#[test]
fn every_command_with_and_without_dry_run_through_the_cli() {
    let fake = railway();
    let ids = fake.service("rootcmd", Some("SUCCESS"));
    let service = ids.0.clone();
    let p = project(&fake.url(), ACCOUNT_TOKEN, &ids, "");
    let mut up = p.up(&[], &[]);
    wait_api(&up, "api running", |d| d["state"] == "running");

    // Dry-runs: the exact request, the token masked, nothing sent.
    let before = fake.requests(&service).len();
    let cases: [(&[&str], &str); 3] = [
        (
            &["deploy", "--param", "commit_sha=4f1c2ab"],
            "serviceInstanceDeployV2",
        ),
        (&["redeploy"], "serviceInstanceRedeploy"),
        (
            &["sleep", "--param", "enabled=true"],
            "serviceInstanceUpdate",
        ),
    ];
    for (args, field) in cases {
        let mut all = vec!["resource", "api"];
        all.extend_from_slice(args);
        all.extend(["--dry-run", "--json"]);
        let out = p.run(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!text.contains(ACCOUNT_TOKEN), "{text}");
        let result: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
        assert_eq!(result["dry_run"], true, "{result}");
        assert!(
            result["requests"][0]["headers"]
                .to_string()
                .contains("****"),
            "the token is shown masked: {result}"
        );
        let request = &result["requests"][0];
        assert_eq!(request["method"], "POST", "{result}");
        assert_eq!(
            request["url"],
            format!("{}/graphql/v2", fake.url()),
            "{result}"
        );
        assert!(
            request["body"]["query"]
                .as_str()
                .is_some_and(|q| q.contains(field)),
            "{result}"
        );
        assert_eq!(
            request["body"]["variables"]["serviceId"], service,
            "{result}"
        );
    }
    let out = p.run(&[
        "resource",
        "api",
        "deploy",
        "--param",
        "commit_sha=4f1c2ab",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("POST {}/graphql/v2", fake.url())),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        fake.requests(&service).len() - before,
        count_reads(fake, &service, before)
    );

    // Bad parameters: exit 2, every one named.
    let out = p.run(&[
        "resource",
        "api",
        "sleep",
        "--param",
        "enabled=maybe",
        "--param",
        "x=1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("enabled") && stderr(&out).contains("`x`"),
        "{}",
        stderr(&out)
    );

    // For real: deploy a commit, followed to running with its build log; redeploy; sleep.
    let out = p.run(&[
        "resource",
        "api",
        "deploy",
        "--param",
        "commit_sha=4f1c2ab",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let new_id = format!("{service}-d1");
    assert_eq!(result["operation"], new_id, "{result}");
    assert_eq!(
        fake.latest(&service).and_then(|d| d.commit).as_deref(),
        Some("4f1c2ab")
    );
    wait_for(LIMIT, "the new deployment's build log", || {
        let logs = stdout(&p.run(&["runtime", "logs", "api", "-n", "500"]));
        logs.contains("[build] building 4f1c2ab").then_some(())
    });
    wait_api(&up, "api running the new deployment", |d| {
        d["state"] == "running"
            && d["status_message"]
                .as_str()
                .is_some_and(|m| m.contains(&new_id))
    });
    let out = p.run(&["resource", "api", "redeploy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count(fake, &service, "RailwayServiceInstanceRedeploy"), 1);
    let out = p.run(&["resource", "api", "sleep", "--param", "enabled=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fake.sleeping_enabled(&service), Some(true));
    let history = stdout(&p.run(&["runtime", "history", "api", "--json"]));
    assert!(
        history.contains("deploy") && history.contains("sleep"),
        "{history}"
    );
    let (_, body) = api(&up).expect("status");
    assert_no_token(&up, &p, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    fake.assert_clean(&service);
}

/// The reads (observes, log reads) among the requests after `before`: a dry-run sends
/// nothing, so every request after it is one of those.
fn count_reads(fake: &RailwayFake, service: &str, before: usize) -> usize {
    fake.requests(service)
        .iter()
        .skip(before)
        .filter(|l| {
            l.starts_with("RailwayServiceInstance ") || l.starts_with("RailwayDeploymentLogs ")
        })
        .count()
}

#[test]
fn a_refused_token_fails_naming_the_instance_and_a_5xx_burst_shows_in_last_sync() {
    let fake = railway();
    let ids = fake.service("rootrefused", Some("SUCCESS"));
    let p = project(&fake.url(), "rw-not-the-token-9c1", &ids, "");
    let mut up = p.up(&[], &[]);
    let (failed, body) = wait_api(&up, "api failed", |d| d["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`rw`") && message.contains("Not Authorized"),
        "{failed}"
    );
    assert_eq!(failed["restarts"], 0, "permanent: {failed}");
    assert!(!body.contains("rw-not-the-token-9c1"), "{body}");
    assert!(!up.lines().join("\n").contains("rw-not-the-token-9c1"));
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());

    let ids = fake.service("rootburst", Some("SUCCESS"));
    let p = project(&fake.url(), ACCOUNT_TOKEN, &ids, "");
    let mut up = p.up(&[], &[]);
    wait_api(&up, "api running", |d| {
        d["state"] == "running" && d["last_sync"]["ok"] == true
    });
    fake.inject(
        &ids.0,
        "RailwayServiceInstance",
        fake_http::Reply::json(503, r#"{"message":"upstream unavailable"}"#),
        3,
    );
    let (burst, _) = wait_api(&up, "the 503 in last_sync", |d| {
        d["last_sync"]["ok"] == false
            && d["last_sync"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("503"))
    });
    assert_eq!(burst["state"], "running", "kept: {burst}");
    assert_eq!(burst["provider_state"], "SUCCESS", "kept: {burst}");
    let (_, body) = wait_api(&up, "a good sync again", |d| d["last_sync"]["ok"] == true);
    assert_no_token(&up, &p, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    fake.assert_clean(&ids.0);
}

#[test]
fn providers_show_railway_lists_every_command_with_its_parameters() {
    let p = Project::new();
    let out = p.run(&["providers", "show", "railway", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let text = shown.to_string();
    let commands = shown["commands"].as_array().expect("commands");
    let ids: Vec<&str> = commands.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["deploy", "redeploy", "sleep"], "{text}");
    let params = |id: &str| -> Vec<(String, Value)> {
        commands
            .iter()
            .find(|c| c["id"] == id)
            .and_then(|c| c["params"].as_array())
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap_or_default().to_owned(),
                            p["required"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        params("deploy"),
        [("commit_sha".to_owned(), Value::Bool(false))]
    );
    assert!(params("redeploy").is_empty());
    assert_eq!(params("sleep"), [("enabled".to_owned(), Value::Bool(true))]);
    assert!(commands.iter().all(|c| c["dry_run"] == true), "{text}");
    let out = p.run(&["providers", "show", "railway"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let human = stdout(&out);
    for word in [
        "deploy",
        "redeploy",
        "sleep",
        "commit_sha",
        "enabled",
        "service_id",
        "environment_id",
    ] {
        assert!(human.contains(word), "{word} missing:\n{human}");
    }
}

#[test]
fn plan_shows_the_restart_a_stopped_service_would_get_and_sends_nothing() {
    let fake = railway();
    let ids = fake.service("rootplan", Some("SUCCESS"));
    fake.set_latest(&ids.0, "SUCCESS", true);
    let p = project(&fake.url(), ACCOUNT_TOKEN, &ids, "");
    let out = p.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains(ACCOUNT_TOKEN), "{text}");
    let plan: Value = serde_json::from_str(&text).expect("JSON");
    let api = plan["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e["name"] == "api"))
        .cloned()
        .expect("api in the plan");
    assert_eq!(api["kind"], "railway", "{api}");
    assert_eq!(api["action"], "resume", "{api}");
    let call = &api["calls"][0];
    assert_eq!(call["url"], format!("{}/graphql/v2", fake.url()), "{api}");
    assert!(
        call["body"]["query"]
            .as_str()
            .is_some_and(|q| q.contains("deploymentRestart")),
        "{api}"
    );
    assert_eq!(
        call["body"]["variables"]["id"],
        format!("{}-d0", ids.0),
        "{api}"
    );
    let sent = fake.requests(&ids.0);
    assert!(
        sent.iter()
            .all(|l| l.starts_with("RailwayServiceInstance ")),
        "plan only reads: {sent:?}"
    );
    assert!(
        fake.latest(&ids.0).is_some_and(|d| d.stopped),
        "still stopped"
    );
    fake.assert_clean(&ids.0);
}

#[test]
fn faults_through_runtime_up_unreachable_unknown_service_rate_limits_and_malformed_answers() {
    let fake = railway();
    // Unreachable: failed, naming the instance, no restart.
    let ids = fake.service("rootunreach", Some("SUCCESS"));
    let p = project("http://127.0.0.1:1", ACCOUNT_TOKEN, &ids, "");
    let mut up = p.up(&[], &[]);
    let (failed, _) = wait_api(&up, "api failed", |d| d["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`rw`") && message.contains("not reachable"),
        "{failed}"
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());

    // An unknown service: failed, named.
    let unknown = ("svc-rootnowhere-0".to_owned(), ids.1.clone());
    let p = project(&fake.url(), ACCOUNT_TOKEN, &unknown, "");
    let mut up = p.up(&[], &[]);
    let (failed, _) = wait_api(&up, "api failed", |d| d["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("svc-rootnowhere-0") && message.contains("not found"),
        "{failed}"
    );
    assert_eq!(failed["restarts"], 0, "{failed}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());

    // 429 with and without Retry-After, malformed JSON, an answer slower than the instance's
    // `timeout`: last_sync shows each, the state stays.
    let ids = fake.service("rootlimits", Some("SUCCESS"));
    let p = project_with(&fake.url(), ACCOUNT_TOKEN, "timeout = \"1s\"\n", &ids, "");
    let mut up = p.up(&[], &[]);
    wait_api(&up, "api running", |d| {
        d["state"] == "running" && d["last_sync"]["ok"] == true
    });
    let faults = [
        (
            fake_http::Reply::json(429, r#"{"message":"rate limited"}"#).header("Retry-After", "1"),
            "retry after 1s",
        ),
        (
            fake_http::Reply::json(429, r#"{"message":"rate limited"}"#),
            "429",
        ),
        (
            fake_http::Reply::json(200, r#"{"data": {"serviceInst"#),
            "malformed JSON",
        ),
        (
            fake_http::Reply::json(503, r#"{"message":"late"}"#).delayed(Duration::from_secs(3)),
            "no answer within 1s",
        ),
    ];
    for (reply, shown) in faults {
        fake.inject(&ids.0, "RailwayServiceInstance", reply, 1);
        let (seen, _) = wait_api(&up, shown, |d| {
            d["last_sync"]["ok"] == false
                && d["last_sync"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(shown))
        });
        assert_eq!(seen["state"], "running", "kept: {seen}");
        assert_eq!(seen["restarts"], 0, "not a crash: {seen}");
        wait_api(&up, "a good sync again", |d| d["last_sync"]["ok"] == true);
    }
    let (_, body) = api(&up).expect("status");
    assert_no_token(&up, &p, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    fake.assert_clean(&ids.0);
}

#[test]
fn every_bad_key_of_a_railway_resource_is_named_at_once() {
    let fake = railway();
    let p = Project::with_config(&format!(
        "[project]\nname = \"rw\"\n\
         [providers.rw]\nprovider = \"railway\"\ntoken = \"{ACCOUNT_TOKEN}\"\nbase_url = \"{}\"\n\
         token_kind = \"robot\"\n\
         [resources.api]\nprovider = \"rw\"\nenvironment_id = 7\n\
         operation_timeout = \"often\"\nlogs = \"yes\"\ncolour = \"blue\"\n",
        fake.url()
    ));
    let out = p.run(&["plan"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for key in [
        "`colour`",
        "`service_id`",
        "`environment_id`",
        "`operation_timeout`",
        "`logs`",
        "`token_kind`",
    ] {
        assert!(err.contains(key), "{key} not named:\n{err}");
    }
    assert!(!err.contains(ACCOUNT_TOKEN), "{err}");
}
