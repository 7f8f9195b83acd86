//! The `fly` provider through `kinfra runtime up`, against the stateful Fly Machines fake
//! behind Prism (crates/kinfra-cloud's harness): a stopped machine is started and shows
//! running with its raw state, `runtime stop` stops it, a machine suspended outside kinfra
//! shows sleeping, `runtime down` (on_down = keep) leaves it alone; `kinfra resource web
//! update|restart|scale` with and without `--dry-run` (scaling down needs `--yes` and names
//! the machines, scaling up does not; a 409 is reported with Fly's reason); `kinfra providers
//! show fly` lists every command with its parameters.

#[allow(dead_code)]
#[path = "../../crates/kinfra-cloud/tests/support/fly_fake.rs"]
pub(crate) mod fly_fake;

// The harness, included once in main.rs; the fake reaches it as `super::`.
use crate::{fake_http, prism};

use crate::support::{Project, Up, pids_tagged, stderr, stdout, unique_tag};
use fly_fake::{FlyFake, TOKEN, fly};
use std::time::Duration;

fn config(tag: &str, base_url: &str, app: &str, machine: &str) -> String {
    format!(
        "[project]\nname = \"fly-it\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.fly]\ntoken = \"{TOKEN}\"\nbase_url = \"{base_url}\"\n\
         [resources.web]\nprovider = \"fly\"\napp = \"{app}\"\nmachine_id = \"{machine}\"\n\
         interval = \"300ms\"\nwait_timeout = \"1s\"\n"
    )
}

/// Waits (bounded) until `name` is in state `want`; the failure shows the status and the
/// runtime's output.
fn wait_state(p: &Project, up: &Up, name: &str, want: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = crate::cli::status_json(p);
        let s = status["services"][name].clone();
        if s["state"] == want {
            return s;
        }
        if std::time::Instant::now() > deadline {
            panic!("{name} never {want}: {status:#}\n{}", up.lines().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(fake: &FlyFake, app: &str, needle: &str) -> usize {
    fake.requests(app)
        .iter()
        .filter(|r| r.contains(needle))
        .count()
}

#[test]
fn a_fly_machine_starts_stops_sleeps_and_is_kept_at_down() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("runtime", &["stopped"], false);
    let id = &ids[0];
    let tag = unique_tag("fly");
    let p = Project::with_config(&config(&tag, &prism.url, &app, id));
    let mut up = p.up(&[], &[]);

    let web = wait_state(&p, &up, "web", "running");
    assert_eq!(fake.state(&app, id), "started");
    assert_eq!(web["provider_state"], "started", "{web}");
    assert_eq!(web["last_sync"]["ok"], true, "{web}");
    assert_eq!(count(fake, &app, "/start"), 1);
    assert!(count(fake, &app, "/wait?state=started") >= 1);

    // `runtime stop web` stops the machine.
    let out = p.run(&["runtime", "stop", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&p, &up, "web", "stopped");
    assert_eq!(fake.state(&app, id), "stopped");
    assert_eq!(count(fake, &app, "/stop"), 1);

    // Started again, then suspended outside kinfra: it shows sleeping.
    let out = p.run(&["runtime", "start", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&p, &up, "web", "running");
    fake.set_state(&app, id, "suspended");
    let web = wait_state(&p, &up, "web", "sleeping");
    assert_eq!(web["provider_state"], "suspended", "{web}");

    // The machine's events and kinfra's own lines are in `runtime logs`.
    let logs = stdout(&p.run(&["runtime", "logs", "web"]));
    assert!(logs.contains("event: start"), "{logs}");
    assert!(logs.contains("Starting Fly machine"), "{logs}");

    // Started once more; `runtime down` with on_down = keep leaves it started.
    let out = p.run(&["runtime", "start", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&p, &up, "web", "running");
    let shown = format!(
        "{}\n{}\n{}",
        stdout(&p.run(&["runtime", "status", "--json"])),
        stdout(&p.run(&["runtime", "logs", "web"])),
        up.lines().join("\n")
    );
    assert!(!shown.contains(TOKEN), "the token is shown:\n{shown}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(
        count(fake, &app, "/stop"),
        1,
        "runtime down stopped a kept machine"
    );
    assert_eq!(fake.state(&app, id), "started");
    assert!(pids_tagged(&tag).is_empty());
    prism.assert_clean(&app);
}

#[test]
fn fly_commands_run_with_and_without_dry_run_through_the_cli() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("commands", &["started"], false);
    let id = &ids[0];
    let tag = unique_tag("fly-cmd");
    let p = Project::with_config(&config(&tag, &prism.url, &app, id));
    let mut up = p.up(&[], &[]);
    wait_state(&p, &up, "web", "running");
    let before = fake.requests(&app).len();

    // update --dry-run: the four requests, the nonce header, the token masked, nothing sent.
    let out = p.run(&[
        "resource",
        "web",
        "update",
        "--param",
        "image=registry.fly.io/kinfra-test:v2",
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(result["dry_run"], true, "{result}");
    let methods: Vec<&str> = result["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|r| r["method"].as_str())
        .collect();
    assert_eq!(methods, ["POST", "GET", "POST", "DELETE"], "{result}");
    let text = result.to_string();
    assert!(text.contains("fly-machine-lease-nonce"), "{text}");
    assert!(text.contains("****") && !text.contains(TOKEN), "{text}");
    let human = p.run(&["resource", "web", "restart", "--dry-run"]);
    assert!(human.status.success(), "{}", stderr(&human));
    assert!(
        stdout(&human).contains(&format!(
            "POST {}/v1/apps/{app}/machines/{id}/restart",
            prism.url
        )),
        "{}",
        stdout(&human)
    );
    let requests_after_dry_runs = fake.requests(&app);
    assert!(
        requests_after_dry_runs[before..]
            .iter()
            .all(|r| r.starts_with("GET") && !r.contains("/lease")),
        "a dry-run sent something: {requests_after_dry_runs:#?}"
    );

    // update for real: under a lease, with current_version.
    let out = p.run(&["resource", "web", "update", "--param", "env=FEATURE=on"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fake.with(&app, |a| a.machines[0].config["env"]["FEATURE"].clone()),
        "on"
    );
    assert_eq!(count(fake, &app, "DELETE"), 1, "the lease was not released");

    // A 409 is reported with Fly's reason (exit 1), sent once.
    fake.inject(
        &app,
        &format!("POST /v1/apps/{app}/machines/{id}$"),
        fake_http::Reply::json(
            409,
            r#"{"error":"machine is being replaced by another deploy"}"#,
        ),
        1,
    );
    let updates = |fake: &FlyFake| {
        fake.requests(&app)
            .iter()
            .filter(|r| r.starts_with(&format!("POST /v1/apps/{app}/machines/{id} ")))
            .count()
    };
    let sent = updates(fake);
    let out = p.run(&["resource", "web", "update", "--param", "image=x:v3"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("409") && err.contains("being replaced"),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "{err}");
    assert_eq!(updates(fake), sent + 1, "a 409 was retried");
    assert_eq!(count(fake, &app, "DELETE"), 2, "the lease was not released");

    // restart (once the update's replacement is done: Fly refuses to restart a machine that is
    // not started), and scale, which needs --yes.
    crate::support::wait_for(Duration::from_secs(30), "the machine started again", || {
        (fake.state(&app, id) == "started").then_some(())
    });
    let out = p.run(&["resource", "web", "restart"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count(fake, &app, "/restart"), 1);
    // scale up clones without --yes; its dry-run says which machine it clones, how often.
    let out = p.run(&[
        "resource",
        "web",
        "scale",
        "--param",
        "count=3",
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let planned: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(planned["data"]["clone_from"], id.as_str(), "{planned}");
    assert_eq!(planned["data"]["clones"], 2, "{planned}");
    let clones = planned["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| {
            r["method"] == "POST" && r["url"] == format!("{}/v1/apps/{app}/machines", prism.url)
        })
        .count();
    assert_eq!(clones, 2, "{planned}");
    assert_eq!(fake.with(&app, |a| a.machines.len()), 1, "a dry-run cloned");
    let out = p.run(&["resource", "web", "scale", "--param", "count=3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: Vec<String> = fake.with(&app, |a| a.machines.iter().map(|m| m.id.clone()).collect());
    assert_eq!(all.len(), 3);
    // scale down: the dry-run names the machines it would destroy; without --yes it is
    // refused naming them, and nothing is destroyed; with --yes they go.
    let out = p.run(&[
        "resource",
        "web",
        "scale",
        "--param",
        "count=1",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for clone in &all[1..] {
        assert!(
            stdout(&out).contains(&format!(
                "DELETE {}/v1/apps/{app}/machines/{clone}",
                prism.url
            )),
            "{}",
            stdout(&out)
        );
    }
    let out = p.run(&["resource", "web", "scale", "--param", "count=1"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("needs confirmation") && err.contains("--yes"),
        "{err}"
    );
    for clone in &all[1..] {
        assert!(err.contains(clone.as_str()), "{clone} not named: {err}");
    }
    assert!(!err.contains(TOKEN), "{err}");
    assert_eq!(count(fake, &app, "?force=true"), 0, "destroyed unconfirmed");
    let out = p.run(&["resource", "web", "scale", "--param", "count=1", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for clone in &all[1..] {
        assert!(
            count(
                fake,
                &app,
                &format!("DELETE /v1/apps/{app}/machines/{clone}?force=true")
            ) == 1,
            "{clone} not destroyed: {:#?}",
            fake.requests(&app)
        );
    }

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
    prism.assert_clean(&app);
}

#[test]
fn providers_show_fly_lists_every_command_with_its_parameters() {
    let p = Project::new();
    let out = p.run(&["providers", "show", "fly", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let text = shown.to_string();
    let commands = shown["commands"].as_array().expect("commands");
    let by_id = |id: &str| {
        commands
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {text}"))
    };
    let params = |id: &str| -> Vec<String> {
        by_id(id)["params"]
            .as_array()
            .expect("params")
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(params("update"), ["image", "env", "size"]);
    assert!(params("restart").is_empty());
    assert_eq!(params("scale"), ["count"]);
    // Only scaling down needs --yes, which the command checks itself.
    assert_eq!(by_id("scale")["confirm"], false);
    assert!(commands.iter().all(|c| c["dry_run"] == true), "{text}");
    let out = p.run(&["providers", "show", "fly"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let human = stdout(&out);
    for word in [
        "update",
        "restart",
        "scale",
        "image",
        "env",
        "size",
        "count",
        "app",
        "machine_id",
        "stop_mode",
    ] {
        assert!(human.contains(word), "{word} missing:\n{human}");
    }
}

/// `web` (running), `denied` (an instance whose token Fly refuses), `missing` (a machine id
/// the app does not have), `gone` (an instance whose API is unreachable), `raw` (straight
/// against the fake, for answers Prism cannot pass) and `slow` (an instance whose `timeout`
/// is 1s).
fn faults_config(tag: &str, prism: &prism::Prism, apps: &[(&str, &str); 4]) -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let resource = |name: &str, instance: &str, app: &str, machine: &str| {
        format!(
            "[resources.{name}]\nprovider = \"{instance}\"\napp = \"{app}\"\n\
             machine_id = \"{machine}\"\ninterval = \"300ms\"\nwait_timeout = \"1s\"\n"
        )
    };
    format!(
        "[project]\nname = \"fly-faults\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.fly]\ntoken = \"{TOKEN}\"\nbase_url = \"{url}\"\n\
         [providers.flybad]\nprovider = \"fly\"\ntoken = \"FlyV1 wrong-token-0x5e\"\n\
         base_url = \"{url}\"\n\
         [providers.flygone]\nprovider = \"fly\"\ntoken = \"{TOKEN}\"\nbase_url = \"http://{closed}\"\n\
         [providers.flyraw]\nprovider = \"fly\"\ntoken = \"{TOKEN}\"\nbase_url = \"{raw}\"\n\
         [providers.flyslow]\nprovider = \"fly\"\ntoken = \"{TOKEN}\"\nbase_url = \"{url}\"\n\
         timeout = \"1s\"\n\
         {}{}{}{}{}{}",
        resource("web", "fly", apps[0].0, apps[0].1),
        resource("denied", "flybad", apps[1].0, apps[1].1),
        resource("missing", "fly", apps[1].0, "e82nosuchmachine"),
        resource("gone", "flygone", apps[1].0, apps[1].1),
        resource("raw", "flyraw", apps[2].0, apps[2].1),
        resource("slow", "flyslow", apps[3].0, apps[3].1),
        url = prism.url,
        raw = prism.fake_url,
    )
}

#[test]
fn faults_through_runtime_up_fail_naming_the_cause_or_show_in_last_sync() {
    let (prism, fake) = fly();
    let (web_app, web) = fake.app("faults-web", &["started"], false);
    let (other_app, other) = fake.app("faults-other", &["started"], false);
    let (raw_app, raw) = fake.app("faults-raw", &["started"], false);
    let (slow_app, slow) = fake.app("faults-slow", &["started"], false);
    let tag = unique_tag("fly-faults");
    let p = Project::with_config(&faults_config(
        &tag,
        prism,
        &[
            (&web_app, &web[0]),
            (&other_app, &other[0]),
            (&raw_app, &raw[0]),
            (&slow_app, &slow[0]),
        ],
    ));
    let mut up = p.up(&[], &[]);
    let message =
        |s: &serde_json::Value| s["status_message"].as_str().unwrap_or_default().to_owned();

    // Permanent faults: failed, naming the cause, no restart.
    let denied = wait_state(&p, &up, "denied", "failed");
    assert!(
        message(&denied).contains("`flybad`") && message(&denied).contains("401"),
        "{denied}"
    );
    assert_eq!(denied["restarts"], 0, "{denied}");
    let missing = wait_state(&p, &up, "missing", "failed");
    assert!(
        message(&missing).contains("e82nosuchmachine") && message(&missing).contains("404"),
        "{missing}"
    );
    assert_eq!(missing["restarts"], 0, "{missing}");
    let gone = wait_state(&p, &up, "gone", "failed");
    assert!(
        message(&gone).contains("`flygone`") && message(&gone).contains("not reachable"),
        "{gone}"
    );
    assert_eq!(gone["restarts"], 0, "{gone}");

    // Passing faults of a running machine's observe: last_sync shows each, the state stays.
    wait_state(&p, &up, "web", "running");
    wait_state(&p, &up, "raw", "running");
    wait_state(&p, &up, "slow", "running");
    let faults = [
        (
            "web",
            web_app.as_str(),
            fake_http::Reply::json(429, r#"{"error":"rate limited"}"#).header("Retry-After", "1"),
            "retry after 1s",
        ),
        (
            "web",
            web_app.as_str(),
            fake_http::Reply::json(429, r#"{"error":"rate limited"}"#),
            "429",
        ),
        (
            "web",
            web_app.as_str(),
            fake_http::Reply::json(503, r#"{"error":"flyd unavailable"}"#),
            "503",
        ),
        (
            "raw",
            raw_app.as_str(),
            fake_http::Reply::json(200, r#"{"id": "#),
            "malformed JSON",
        ),
        // Slower than the instance's 1s `timeout` (a machine read: the wait long-poll itself
        // is given its own timeout on top).
        (
            "slow",
            slow_app.as_str(),
            fake_http::Reply::json(503, r#"{"error":"too late"}"#).delayed(Duration::from_secs(3)),
            "no answer within 1s",
        ),
    ];
    for (name, app, reply, shown) in faults {
        let target = if name == "slow" {
            format!("GET /v1/apps/{app}/machines/{}$", slow[0])
        } else {
            format!("GET /v1/apps/{app}/machines/")
        };
        fake.inject(app, &target, reply, 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let seen = loop {
            let s = crate::cli::status_json(&p)["services"][name].clone();
            if s["last_sync"]["ok"] == false
                && s["last_sync"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(shown))
            {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{shown} never in last_sync: {s}\n{}",
                up.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(seen["state"], "running", "kept: {seen}");
        assert_eq!(seen["restarts"], 0, "not a crash: {seen}");
        assert_eq!(seen["provider_state"], "started", "kept: {seen}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while crate::cli::status_json(&p)["services"][name]["last_sync"]["ok"] != true {
            assert!(
                std::time::Instant::now() < deadline,
                "no good sync after {shown}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let shown = format!(
        "{}\n{}",
        stdout(&p.run(&["runtime", "status", "--json"])),
        up.lines().join("\n")
    );
    assert!(
        !shown.contains(TOKEN) && !shown.contains("wrong-token-0x5e"),
        "{shown}"
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
    // Fly's spec declares none of these fault answers (Prism warns "unable to match the
    // returned status code"): only those, on the faults, are accepted.
    for app in [&web_app, &other_app, &slow_app] {
        let bad: Vec<String> = prism
            .violations(app)
            .iter()
            .filter(|e| {
                !([401, 404, 429, 503].contains(&e.status)
                    && e.violation
                        .as_deref()
                        .is_some_and(|v| v.contains("Unable to match the returned status code")))
            })
            .map(|e| {
                format!(
                    "{} {} → {}: {:?}",
                    e.method, e.target, e.status, e.violation
                )
            })
            .collect();
        assert!(bad.is_empty(), "{bad:#?}");
        assert!(!prism.exchanges(app).is_empty());
    }
}

#[test]
fn plan_shows_the_start_and_wait_a_stopped_machine_would_get_and_sends_nothing() {
    let (prism, fake) = fly();
    let (app, ids) = fake.app("plan", &["stopped", "started"], false);
    let config = |machine: &str| {
        config(&unique_tag("fly-plan"), &prism.url, &app, machine)
            .replace("[resources.web]", &format!("[resources.{machine}]"))
    };
    let p = Project::with_config(&format!("{}\n{}", config(&ids[0]), {
        // The second resource's table only (same instance).
        let second = config(&ids[1]);
        second[second.find("[resources.").unwrap_or(0)..].to_owned()
    }));
    let out = p.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON plan");
    let entry = |name: &str| {
        plan["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {plan}"))
    };
    let stopped = entry(&ids[0]);
    assert_eq!(stopped["kind"], "fly", "{stopped}");
    assert_eq!(stopped["action"], "resume", "{stopped}");
    assert_eq!(stopped["on_down"], "keep", "{stopped}");
    let calls: Vec<String> = stopped["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["method"].as_str().unwrap_or(""),
                c["url"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(calls.len(), 2, "{stopped}");
    assert!(
        calls[0].starts_with("POST ") && calls[0].ends_with(&format!("/machines/{}/start", ids[0])),
        "{calls:?}"
    );
    assert!(
        calls[1].contains("/wait?state=started&timeout=1&version=01JFAKEVERSION"),
        "{calls:?}"
    );
    assert!(!stopped.to_string().contains(TOKEN), "{stopped}");
    let started = entry(&ids[1]);
    assert_eq!(started["action"], "noop", "{started}");
    // Reads only: the machine is still stopped, nothing but GETs reached the fake.
    assert_eq!(fake.state(&app, &ids[0]), "stopped");
    assert!(
        fake.requests(&app).iter().all(|r| r.starts_with("GET ")),
        "{:#?}",
        fake.requests(&app)
    );
    prism.assert_clean(&app);
}
