//! The `vercel` provider through `kinfra runtime up`, against the stateful Vercel fake behind
//! Prism (Vercel's own spec, trimmed: `crates/kinfra-cloud/specs/vercel/`; request bodies
//! checked by Ajv, which Prism does not): a READY project runs with its URL, its build events
//! and runtime logs reach `runtime logs`, `runtime stop` pauses it and `runtime start`
//! unpauses it, a pause outside kinfra shows stopped and an unpause outside is taken up again,
//! `runtime down` (keep) sends nothing; every command with and without `--dry-run`, a deploy
//! followed to READY and a failed build shown failed with its reason; a dependent gets the
//! deployment's URL; `kinfra plan` shows the unpause; a refused token, an unknown project, a
//! 5xx burst, 429 with and without Retry-After, an answer slower than the instance's
//! `timeout`, malformed JSON and an unreachable API; the token shows nowhere.

#[allow(dead_code)]
#[path = "../../crates/kinfra-cloud/tests/support/vercel_fake.rs"]
pub(crate) mod vercel_fake;

// The harness, included once in main.rs; the fake reaches it as `super::`.
use crate::{fake_http, fault_script, prism};

use crate::support::{Project, Up, http_get, stderr, stdout, wait_for};
use serde_json::Value;
use std::time::Duration;
use vercel_fake::{TOKEN, VercelFake, vercel};

const LIMIT: Duration = Duration::from_secs(30);

/// A project with one Vercel resource `web` on project `id`, the API at `base`.
fn project(base: &str, token: &str, id: &str, extra: &str) -> Project {
    project_with(base, token, "", id, extra)
}

/// The same with `instance` added to the provider instance's table (`timeout = ...`).
fn project_with(base: &str, token: &str, instance: &str, id: &str, extra: &str) -> Project {
    Project::with_config(&format!(
        "[project]\nname = \"vc\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.vc]\nprovider = \"vercel\"\ntoken = \"{token}\"\nbase_url = \"{base}\"\n{instance}\
         [resources.web]\nprovider = \"vc\"\nproject_id = \"{id}\"\ninterval = \"200ms\"\n{extra}"
    ))
}

/// `/__status__`'s entry of `web`, and the whole body.
fn web(up: &Up) -> Option<(Value, String)> {
    let (code, body) = http_get(&up.dashboard_addr(), "/__status__").ok()?;
    let status: Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| (status["services"]["web"].clone(), body))
}

fn wait_web(up: &Up, what: &str, cond: impl Fn(&Value) -> bool) -> (Value, String) {
    wait_for(LIMIT, what, || web(up).filter(|(d, _)| cond(d)))
}

fn logs(p: &Project) -> String {
    stdout(&p.run(&["runtime", "logs", "web", "-n", "500"]))
}

fn assert_no_token(up: &Up, p: &Project, body: &str) {
    let shown = format!(
        "{body}\n{}\n{}\n{}",
        up.lines().join("\n"),
        logs(p),
        stdout(&p.run(&["runtime", "status", "--json"])),
    );
    assert!(!shown.contains(TOKEN), "the token shows:\n{shown}");
}

/// Every exchange of `id` passed Prism and every request body its schema.
fn assert_clean(prism: &prism::Prism, fake: &VercelFake, id: &str) {
    prism.assert_clean(id);
    assert_eq!(fake.body_errors(id), Vec::<String>::new());
}

/// For the fault tests: Vercel's spec declares no 404, 429 or 5xx for the reads they hit, so
/// Prism warns on exactly those answers of `status`; only those are let through.
fn assert_clean_but_undeclared(prism: &prism::Prism, id: &str, status: u16) {
    let unexpected: Vec<_> = prism
        .violations(id)
        .into_iter()
        .filter(|e| {
            !(e.status == status
                && e.violation
                    .as_deref()
                    .is_some_and(|v| v.contains("Unable to match the returned status code")))
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
}

#[test]
fn a_project_runs_streams_its_logs_pauses_and_outside_changes_are_seen() {
    let (prism, fake) = vercel();
    let (id, first) = fake.project("rootlife", None, false, Some("READY"));
    let p = project(&prism.url, TOKEN, &id, "");
    let mut up = p.up(&[], &[]);
    let (running, _) = wait_web(&up, "web running and healthy", |d| {
        d["state"] == "running" && d["health"] == "healthy"
    });
    assert_eq!(running["kind"], "vercel", "{running}");
    assert_eq!(running["provider_state"], "READY", "{running}");
    let url = fake.deployments(&id)[0].url.clone();
    assert_eq!(
        running["status_message"],
        format!("READY https://{url}"),
        "{running}"
    );

    // Build events, then runtime logs, streamed into `runtime logs`.
    wait_for(LIMIT, "the build events in runtime logs", || {
        logs(&p)
            .contains("build: Cloning github.com/acme/site")
            .then_some(())
    });
    fake.add_row(&id, &first, "info", "hello from rootlife");
    wait_for(LIMIT, "a runtime log row in runtime logs", || {
        logs(&p)
            .contains("runtime: GET /api/hello 200: hello from rootlife")
            .then_some(())
    });

    // runtime stop: paused, stopped.
    let out = p.run(&["runtime", "stop", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (stopped, _) = wait_web(&up, "web stopped", |d| d["state"] == "stopped");
    assert_eq!(stopped["provider_state"], "paused", "{stopped}");
    assert!(fake.with(&id, |x| x.paused));
    assert_eq!(fake.count(&id, "/pause"), 1);

    // runtime start: unpaused, running.
    let out = p.run(&["runtime", "start", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_web(&up, "web running again", |d| d["state"] == "running");
    assert_eq!(fake.count(&id, "/unpause"), 1);

    // Paused outside kinfra: stopped, not restarted, nothing sent; unpaused outside: taken
    // up again.
    fake.set_paused(&id, true);
    let (outside, _) = wait_web(&up, "web stopped outside", |d| d["state"] == "stopped");
    assert_eq!(
        outside["status_message"], "paused outside kinfra",
        "{outside}"
    );
    assert_eq!(outside["restarts"], 0, "{outside}");
    fake.set_paused(&id, false);
    let (again, body) = wait_web(&up, "web running after the outside unpause", |d| {
        d["state"] == "running"
    });
    assert_eq!(again["restarts"], 0, "{again}");
    assert_eq!(fake.count(&id, "/pause"), 1, "nothing sent");
    assert_eq!(fake.count(&id, "/unpause"), 1, "nothing sent");

    assert_no_token(&up, &p, &body);
    // runtime down with the default on_down = keep: nothing is sent.
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_eq!(fake.count(&id, "/pause"), 1, "keep");
    assert!(!fake.with(&id, |x| x.paused));
    assert_clean(prism, fake, &id);
}

#[test]
fn every_command_with_and_without_dry_run_through_the_cli() {
    let (prism, fake) = vercel();
    let (id, first) = fake.project("rootcmd", None, false, Some("READY"));
    let p = project(&prism.url, TOKEN, &id, "");
    let mut up = p.up(&[], &[]);
    wait_web(&up, "web running", |d| d["state"] == "running");

    // Dry-runs: the exact requests, the token masked, nothing but reads sent.
    let writes = |fake: &VercelFake| {
        fake.requests(&id)
            .iter()
            .filter(|l| !l.starts_with("GET "))
            .count()
    };
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec!["deploy".into(), "--param".into(), "git_ref=v2".into()],
            vec![
                format!("GET {}/v9/projects/{id}", prism.url),
                format!("POST {}/v13/deployments", prism.url),
            ],
        ),
        (
            vec![
                "redeploy".into(),
                "--param".into(),
                format!("deployment_id={first}"),
            ],
            vec![format!("POST {}/v13/deployments", prism.url)],
        ),
        (
            vec![
                "promote".into(),
                "--param".into(),
                format!("deployment_id={first}"),
            ],
            vec![format!(
                "POST {}/v10/projects/{id}/promote/{first}",
                prism.url
            )],
        ),
        (
            vec![
                "cancel".into(),
                "--param".into(),
                format!("deployment_id={first}"),
            ],
            vec![format!(
                "PATCH {}/v12/deployments/{first}/cancel",
                prism.url
            )],
        ),
        (
            vec!["list-deployments".into()],
            vec![format!(
                "GET {}/v6/deployments?projectId={id}&limit=10",
                prism.url
            )],
        ),
    ];
    for (args, expected) in cases {
        let mut all: Vec<&str> = vec!["resource", "web"];
        all.extend(args.iter().map(String::as_str));
        all.extend(["--dry-run", "--json"]);
        let out = p.run(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!text.contains(TOKEN), "{text}");
        let result: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
        assert_eq!(result["dry_run"], true, "{result}");
        assert!(
            result["requests"][0]["headers"]
                .to_string()
                .contains("****"),
            "the token is shown masked: {result}"
        );
        let shown: Vec<String> = result["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap_or(""),
                    r["url"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(shown, expected, "{result}");
    }
    let out = p.run(&[
        "resource",
        "web",
        "promote",
        "--param",
        &format!("deployment_id={first}"),
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "POST {}/v10/projects/{id}/promote/{first}",
            prism.url
        )),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        writes(fake),
        0,
        "a dry-run sends nothing: {:?}",
        fake.requests(&id)
    );

    // Bad parameters: exit 2, every one named; cancel needs --yes.
    let out = p.run(&[
        "resource",
        "web",
        "list-deployments",
        "--param",
        "limit=0",
        "--param",
        "x=1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("limit") && stderr(&out).contains("`x`"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&[
        "resource",
        "web",
        "cancel",
        "--param",
        &format!("deployment_id={first}"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));

    // For real: a deploy is followed to READY, its build in `runtime logs`.
    let out = p.run(&[
        "resource",
        "web",
        "deploy",
        "--param",
        "git_ref=release",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let new = result["operation"]
        .as_str()
        .expect("the deployment's id")
        .to_owned();
    wait_web(&up, "web running the new deployment", |d| {
        d["state"] == "running"
            && fake.deployments(&id).first().is_some_and(|n| {
                n.uid == new && d["status_message"] == format!("READY https://{}", n.url)
            })
    });
    wait_for(LIMIT, "the new build in runtime logs", || {
        let text = logs(&p);
        (text.contains("build: Cloning (github at release)")
            && text.contains("build: Build Completed"))
        .then_some(())
    });
    // A second deploy, canceled while queued (--yes), then redeploy, promote and list.
    let out = p.run(&["resource", "web", "deploy", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let queued: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let queued = queued["operation"].as_str().expect("id").to_owned();
    let out = p.run(&[
        "resource",
        "web",
        "cancel",
        "--param",
        &format!("deployment_id={queued}"),
        "--yes",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let canceled: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(canceled["operation_state"], "CANCELED", "{canceled}");
    wait_web(&up, "the canceled deploy shows stopped", |d| {
        d["state"] == "stopped"
    });
    let out = p.run(&[
        "resource",
        "web",
        "promote",
        "--param",
        &format!("deployment_id={new}"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The promoted READY deployment is production's latest again: taken up, no restart.
    wait_web(&up, "web running the promoted deployment", |d| {
        d["state"] == "running" && d["restarts"] == 0
    });
    let out = p.run(&[
        "resource",
        "web",
        "redeploy",
        "--param",
        &format!("deployment_id={first}"),
        "--param",
        "target=staging",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&[
        "resource",
        "web",
        "list-deployments",
        "--param",
        "target=production",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(3), "{listed}");
    assert_eq!(
        listed["data"][0]["id"], new,
        "promoted is production's latest: {listed}"
    );
    let history = stdout(&p.run(&["runtime", "history", "web", "--json"]));
    for command in [
        "deploy",
        "cancel",
        "promote",
        "redeploy",
        "list-deployments",
    ] {
        assert!(history.contains(command), "{command}: {history}");
    }
    let (_, body) = web(&up).expect("status");
    assert_no_token(&up, &p, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_clean(prism, fake, &id);
}

#[test]
fn a_failed_build_shows_failed_with_the_reason() {
    let (prism, fake) = vercel();
    let (id, _) = fake.project("rootbroken", None, false, Some("READY"));
    let p = project(&prism.url, TOKEN, &id, "");
    let mut up = p.up(&[], &[]);
    wait_web(&up, "web running", |d| d["state"] == "running");
    fake.with(&id, |x| x.fail_next_build = true);
    let out = p.run(&["resource", "web", "deploy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (failed, body) = wait_web(&up, "web failed", |d| d["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(message.contains("ERROR: production deployment"), "{failed}");
    assert!(message.contains("exited with 1"), "the reason: {failed}");
    assert_eq!(failed["provider_state"], "ERROR", "{failed}");
    assert_eq!(failed["restarts"], 0, "not restarted: {failed}");
    wait_for(LIMIT, "the failed build in runtime logs", || {
        logs(&p)
            .contains("build: Error: Command \"npm run build\" exited with 1")
            .then_some(())
    });
    assert_no_token(&up, &p, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_clean(prism, fake, &id);
}

#[test]
fn a_refused_token_fails_naming_the_instance_and_a_5xx_burst_shows_in_last_sync() {
    let (prism, fake) = vercel();
    let (id, _) = fake.project("rootrefused", None, false, Some("READY"));
    let p = project(&prism.url, "vc-not-the-token-7f2", &id, "");
    let mut up = p.up(&[], &[]);
    let (failed, body) = wait_web(&up, "web failed", |d| d["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("refused the token of provider instance `vc` (401)"),
        "{failed}"
    );
    assert_eq!(failed["restarts"], 0, "permanent: {failed}");
    assert!(!body.contains("vc-not-the-token-7f2"), "{body}");
    assert!(!up.lines().join("\n").contains("vc-not-the-token-7f2"));
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    prism.assert_clean(&id);

    // A 5xx burst on the project read: last_sync shows it, the state stays. Vercel's spec
    // declares no 5xx for that read, so Prism warns on exactly those injected answers.
    let (id, _) = fake.project("rootburst", None, false, Some("READY"));
    let p = project(&prism.url, TOKEN, &id, "");
    let mut up = p.up(&[], &[]);
    wait_web(&up, "web running", |d| {
        d["state"] == "running" && d["last_sync"]["ok"] == true
    });
    fake.inject(
        &id,
        &format!("GET /v9/projects/{id}"),
        fake_http::Reply::json(500, r#"{"error":{"code":"internal","message":"boom"}}"#),
        3,
    );
    let (burst, _) = wait_web(&up, "the 500 in last_sync", |d| {
        d["last_sync"]["ok"] == false
            && d["last_sync"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("HTTP 500"))
    });
    assert_eq!(burst["state"], "running", "kept: {burst}");
    assert_eq!(burst["provider_state"], "READY", "kept: {burst}");
    let (_, body) = wait_web(&up, "a good sync again", |d| d["last_sync"]["ok"] == true);
    assert_no_token(&up, &p, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_clean_but_undeclared(prism, &id, 500);
}

#[test]
fn providers_show_vercel_lists_every_command_with_its_parameters() {
    let p = Project::new();
    let out = p.run(&["providers", "show", "vercel", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let text = shown.to_string();
    let commands = shown["commands"].as_array().expect("commands");
    let ids: Vec<&str> = commands.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            "deploy",
            "redeploy",
            "promote",
            "cancel",
            "list-deployments"
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
    assert_eq!(params("deploy"), ["target", "git_ref"]);
    assert_eq!(params("redeploy"), ["deployment_id", "target"]);
    assert_eq!(params("promote"), ["deployment_id"]);
    assert_eq!(params("cancel"), ["deployment_id"]);
    assert_eq!(params("list-deployments"), ["limit", "target"]);
    let confirm: Vec<bool> = commands.iter().map(|c| c["confirm"] == true).collect();
    assert_eq!(confirm, [false, false, false, true, false], "{text}");
    assert!(commands.iter().all(|c| c["dry_run"] == true), "{text}");
    let out = p.run(&["providers", "show", "vercel"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let human = stdout(&out);
    for word in [
        "deploy",
        "redeploy",
        "promote",
        "cancel",
        "list-deployments",
        "deployment_id",
        "git_ref",
        "project_id",
        "build_timeout",
    ] {
        assert!(human.contains(word), "{word} missing:\n{human}");
    }
}

#[test]
fn plan_shows_the_unpause_a_paused_project_would_get_and_sends_nothing() {
    let (prism, fake) = vercel();
    let (id, _) = fake.project("rootplan", None, true, Some("READY"));
    let p = project(&prism.url, TOKEN, &id, "");
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
    assert_eq!(web["kind"], "vercel", "{web}");
    assert_eq!(web["action"], "resume", "{web}");
    assert_eq!(web["calls"][0]["method"], "POST", "{web}");
    assert_eq!(
        web["calls"][0]["url"].as_str(),
        Some(format!("{}/v1/projects/{id}/unpause", prism.url).as_str()),
        "{web}"
    );
    assert_eq!(fake.count(&id, "POST"), 0, "plan sent something");
    assert!(fake.with(&id, |x| x.paused));
    assert_clean(prism, fake, &id);
}

#[test]
fn a_dependent_started_once_the_project_is_ready_gets_its_deployment_url() {
    let (prism, fake) = vercel();
    let (id, first) = fake.project("rooturl", None, true, Some("READY"));
    let tag = crate::support::unique_tag("vercel-url");
    let p = project(
        &prism.url,
        TOKEN,
        &id,
        &format!(
            "[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
             [services.app]\ncommand = \"env > app.env && exec sleep 1000\"\n\
             env = {{ FRONTEND = \"${{resources.web.url}}\", DEPLOYMENT = \"${{resources.web.deployment_id}}\" }}\n\
             depends_on = {{ web = \"healthy\" }}\n"
        ),
    );
    let mut up = p.up(&[], &[]);
    wait_for(LIMIT, "app running with its env written", || {
        let (code, body) = http_get(&up.dashboard_addr(), "/__status__").ok()?;
        let status: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && status["services"]["app"]["state"] == "running").then_some(())?;
        std::fs::read_to_string(p.path().join("app.env"))
            .ok()
            .filter(|e| e.contains("FRONTEND="))
    });
    let env = std::fs::read_to_string(p.path().join("app.env")).expect("app.env");
    let url = fake.deployments(&id)[0].url.clone();
    assert!(env.contains(&format!("FRONTEND=https://{url}\n")), "{env}");
    assert!(env.contains(&format!("DEPLOYMENT={first}\n")), "{env}");
    assert_eq!(
        fake.count(&id, "/unpause"),
        1,
        "unpaused before the dependent"
    );
    let (_, body) = web(&up).expect("status");
    assert_no_token(&up, &p, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert!(crate::support::pids_tagged(&tag).is_empty());
    assert_clean(prism, fake, &id);
}

#[test]
fn rate_limits_and_a_malformed_answer_show_in_last_sync_and_an_unreachable_api_fails() {
    // 429 with and without Retry-After: shown in last_sync, the state kept, no restart. (Vercel's
    // spec declares no 429 for the project read: Prism warns on exactly those answers.)
    let (prism, fake) = vercel();
    let (id, _) = fake.project("root429", None, false, Some("READY"));
    let p = project(&prism.url, TOKEN, &id, "");
    let mut up = p.up(&[], &[]);
    wait_web(&up, "web running", |d| {
        d["state"] == "running" && d["last_sync"]["ok"] == true
    });
    for reply in [
        fake_http::Reply::json(
            429,
            r#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
        )
        .header("Retry-After", "1"),
        fake_http::Reply::json(
            429,
            r#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
        ),
    ] {
        fake.inject(&id, &format!("GET /v9/projects/{id}"), reply, 1);
        let (limited, _) = wait_web(&up, "the 429 in last_sync", |d| {
            d["last_sync"]["ok"] == false
                && d["last_sync"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("429"))
        });
        assert_eq!(limited["state"], "running", "kept: {limited}");
        assert_eq!(limited["restarts"], 0, "{limited}");
        wait_web(&up, "a good sync again", |d| d["last_sync"]["ok"] == true);
    }
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_clean_but_undeclared(prism, &id, 429);

    // Malformed JSON (Prism would answer it with its own error: straight to the fake).
    let (id, _) = fake.project("rootmalformed", None, false, Some("READY"));
    let p = project(&prism.fake_url, TOKEN, &id, "");
    let mut up = p.up(&[], &[]);
    wait_web(&up, "web running", |d| d["state"] == "running");
    fake.inject(
        &id,
        &format!("GET /v6/deployments?projectId={id}"),
        fake_http::Reply::json(200, r#"{"deployments": [{"uid"#),
        2,
    );
    let (malformed, _) = wait_web(&up, "the malformed answer in last_sync", |d| {
        d["last_sync"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("malformed JSON"))
    });
    assert_eq!(malformed["state"], "running", "kept: {malformed}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());

    // Nothing listens on port 1: failed for good, naming the instance.
    let p = project("http://127.0.0.1:1", TOKEN, "prj_unreachable", "");
    let mut up = p.up(&[], &[]);
    let (failed, body) = wait_web(&up, "web failed", |d| d["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the Vercel API of provider instance `vc`"),
        "{failed}"
    );
    assert_eq!(failed["restarts"], 0, "permanent: {failed}");
    assert_no_token(&up, &p, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
}

#[test]
fn an_unknown_project_fails_naming_it_and_a_slow_answer_shows_in_last_sync() {
    // A project id the account does not have: failed, named, not restarted.
    let (prism, fake) = vercel();
    let missing = "prj_rootmissing0";
    let p = project(&prism.url, TOKEN, missing, "");
    let mut up = p.up(&[], &[]);
    let (failed, body) = wait_web(&up, "web failed", |d| d["state"] == "failed");
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains(missing) && message.contains("404"),
        "{failed}"
    );
    assert_eq!(failed["restarts"], 0, "permanent: {failed}");
    assert_no_token(&up, &p, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_clean_but_undeclared(prism, missing, 404);

    // Slower than the instance's `timeout`: last_sync says so, the state stays.
    let (id, _) = fake.project("rootslow", None, false, Some("READY"));
    let p = project_with(&prism.url, TOKEN, "timeout = \"1s\"\n", &id, "");
    let mut up = p.up(&[], &[]);
    wait_web(&up, "web running", |d| {
        d["state"] == "running" && d["last_sync"]["ok"] == true
    });
    let late = fake_http::Reply::json(200, "{}").delayed(Duration::from_secs(3));
    fake.inject(&id, &format!("GET /v9/projects/{id}"), late, 1);
    let (late, _) = wait_web(&up, "the timeout in last_sync", |d| {
        d["last_sync"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within 1s"))
    });
    assert_eq!(late["state"], "running", "kept: {late}");
    assert_eq!(late["provider_state"], "READY", "kept: {late}");
    assert_eq!(late["restarts"], 0, "{late}");
    let (_, body) = wait_web(&up, "a good sync again", |d| d["last_sync"]["ok"] == true);
    assert_no_token(&up, &p, &body);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
    assert_clean(prism, fake, &id);
}
