//! Provider resources through the binary: `[resources.NAME] provider = "..."` runs under the
//! supervisor like a process or container. The built-in `command` provider with real shell
//! commands (a state file stands in for the thing they manage) reaches running, is stopped by
//! `kinfra runtime stop` (its stop command runs), and a dependent service waits for it; an
//! uninstalled provider and a key the provider refuses fail `runtime up` with exit 2.

use crate::support::{Project, pids_tagged, stderr, stdout, unique_tag, wait_for};
use std::time::Duration;

fn config(tag: &str, extra: &str) -> String {
    format!(
        "[project]\nname = \"pr\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.sh]\nprovider = \"command\"\n\
         [resources.flag]\nprovider = \"sh\"\ninterval = \"200ms\"\n\
         start = \"touch flag.state\"\nstop = \"rm -f flag.state\"\nstatus = \"test -f flag.state\"\n\
         {extra}"
    )
}

#[test]
fn a_command_provider_resource_runs_stops_and_gates_its_dependent() {
    let tag = unique_tag("provider-res");
    let p = Project::with_config(&config(
        &tag,
        "[services.app]\ncommand = \"exec sleep 1000\"\ndepends_on = { flag = \"started\" }\n",
    ));
    let mut up = p.up(&[], &[]);
    let state = |p: &Project, name: &str| crate::cli::status_json(p)["services"][name].clone();
    wait_for(Duration::from_secs(20), "flag running", || {
        (state(&p, "flag")["state"] == "running").then_some(())
    });
    assert!(
        p.path().join("flag.state").exists(),
        "its start command ran"
    );
    wait_for(Duration::from_secs(20), "the dependent running", || {
        crate::cli::running_pid(&p, "app")
    });

    let out = p.run(&["runtime", "stop", "flag"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(Duration::from_secs(20), "flag stopped", || {
        (state(&p, "flag")["state"] == "stopped").then_some(())
    });
    assert!(
        !p.path().join("flag.state").exists(),
        "its stop command ran"
    );

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

#[test]
fn an_uninstalled_provider_or_a_refused_key_fails_runtime_up_naming_it() {
    let tag = unique_tag("provider-bad");
    let p = Project::with_config(&format!(
        "[project]\nname = \"pb\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.nowhere]\nprovider = \"not-installed-anywhere\"\n\
         [resources.x]\nprovider = \"nowhere\"\n"
    ));
    let out = p.run(&["runtime", "up"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resources.x")
            && stderr(&out).contains("not-installed-anywhere")
            && stderr(&out).contains("kinfra providers discover"),
        "{}",
        stderr(&out)
    );

    let p = Project::with_config(&config(&tag, "").replace("status = ", "stauts = "));
    let out = p.run(&["runtime", "up"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Every problem, each on its own `error:` line naming the resource and the key.
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: resources.flag") && l.contains("`stauts`"))
            && err
                .lines()
                .any(|l| l.starts_with("error: resources.flag") && l.contains("`status`: missing")),
        "{err}"
    );
    assert!(pids_tagged(&tag).is_empty());
}

/// The Python test plugin of kinfra-provider (a real external executable).
fn plugin_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/kinfra-provider/tests/plugins")
}

#[test]
fn a_command_provider_resource_command_dry_run_plans_and_runs_nothing() {
    let tag = unique_tag("provider-cmd");
    let p = Project::with_config(&config(&tag, ""));
    let mut up = p.up(&[], &[]);
    let state = |p: &Project| crate::cli::status_json(p)["services"]["flag"]["state"].clone();
    wait_for(Duration::from_secs(20), "flag running", || {
        (state(&p) == "running").then_some(())
    });
    let out = p.run(&["runtime", "stop", "flag"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(Duration::from_secs(20), "flag stopped", || {
        (state(&p) == "stopped").then_some(())
    });
    assert!(!p.path().join("flag.state").exists());

    let out = p.run(&["resource", "flag", "start", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("dry run") && text.contains("EXEC") && text.contains("touch flag.state"),
        "{text}"
    );
    let out = p.run(&["resource", "flag", "start", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON result");
    assert_eq!(result["dry_run"], true, "{result}");
    assert_eq!(result["requests"][0]["method"], "EXEC", "{result}");
    assert!(
        !p.path().join("flag.state").exists(),
        "a dry-run ran the start command"
    );

    let out = p.run(&["resource", "flag", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`nope`") && stderr(&out).contains("start, stop, status"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&["resource", "nothing-here", "start"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown resource `nothing-here`"),
        "{}",
        stderr(&out)
    );

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

#[test]
fn a_plugin_resource_command_is_typed_masked_and_survives_a_plugin_crash() {
    let tag = unique_tag("provider-plugin");
    let token = "tok-Zq81-do-not-show";
    let dir = plugin_dir();
    let p = Project::with_config(&format!(
        "[project]\nname = \"pp\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers]\nplugin_dirs = [\"{}\"]\n\
         [providers.fake]\nprovider = \"pyfake\"\ntoken = \"{token}\"\n\
         [resources.thing]\nprovider = \"fake\"\ninterval = \"200ms\"\nproject_id = \"p1\"\n",
        dir.display()
    ));
    let mut up = p.up(&[], &[]);
    let state = |p: &Project| crate::cli::status_json(p)["services"]["thing"]["state"].clone();
    wait_for(Duration::from_secs(20), "thing running", || {
        (state(&p) == "running").then_some(())
    });

    let out = p.run(&["resource", "thing", "scale", "--param", "replicas=two"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("parameter `replicas`: expected an integer, got `two`"),
        "{}",
        stderr(&out)
    );
    let out = p.run(&[
        "resource",
        "thing",
        "scale",
        "--param",
        "replicas=11",
        "--param",
        "x=1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`replicas`: 11 is out of range") && err.contains("`x`: unknown parameter"),
        "every problem at once: {err}"
    );

    for json in [false, true] {
        let mut args = vec![
            "resource",
            "thing",
            "scale",
            "--param",
            "replicas=2",
            "--dry-run",
        ];
        if json {
            args.push("--json");
        }
        let out = p.run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!all.contains(token), "the token leaked: {all}");
        if json {
            let result: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
            assert_eq!(result["dry_run"], true, "{result}");
            assert_eq!(result["requests"][0]["method"], "POST", "{result}");
            assert_eq!(result["requests"][0]["body"]["replicas"], 2, "{result}");
            assert_eq!(result["requests"][0]["body"]["echo"], "****", "{result}");
        } else {
            assert!(
                all.contains("POST https://api.fake.example/things/p1/scale?token=****"),
                "{all}"
            );
            assert!(all.contains("\"replicas\": 2"), "{all}");
        }
    }

    let out = p.run(&["resource", "thing", "crash"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("crash"), "{}", stderr(&out));
    assert!(!stderr(&out).contains(token), "{}", stderr(&out));
    let out = p.run(&["runtime", "status"]);
    assert!(
        out.status.success(),
        "status still answers: {}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("thing"), "{}", stdout(&out));

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

/// Usable vs in sync (DESIGN): `/__status__` shows the provider's raw state and how the last
/// status poll went. A status command that fails (with `status_running` set, a non-zero exit
/// is an error, not a state) shows as `last_sync.ok = false` with its error, while the state
/// and `provider_state` stay what the last good poll said; a good poll clears it.
#[test]
fn status_shows_the_provider_state_and_a_failing_sync_beside_the_state() {
    let tag = unique_tag("provider-sync");
    let p = Project::with_config(&format!(
        "[project]\nname = \"ps\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.sh]\nprovider = \"command\"\n\
         [resources.cloud]\nprovider = \"sh\"\ninterval = \"200ms\"\n\
         start = \"echo ACTIVE > cloud.state\"\nstatus = \"cat cloud.state\"\n\
         status_running = \"^ACTIVE$\"\nstatus_map = {{ \"^PAUSED$\" = \"stopped\" }}\n"
    ));
    let mut up = p.up(&[], &[]);
    let addr = up.dashboard_addr();
    let cloud = || -> Option<serde_json::Value> {
        let (code, body) = crate::support::http_get(&addr, "/__status__").ok()?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200).then(|| status["services"]["cloud"].clone())
    };
    let synced = wait_for(Duration::from_secs(20), "cloud running and in sync", || {
        cloud().filter(|c| {
            c["state"] == "running"
                && c["last_sync"]["ok"] == true
                && c["provider_state"] == "ACTIVE"
        })
    });
    assert!(synced["last_sync"]["at"].as_str().is_some(), "{synced}");
    assert!(synced["last_sync"]["error"].is_null(), "{synced}");

    std::fs::remove_file(p.path().join("cloud.state")).expect("remove the state file");
    let failing = wait_for(Duration::from_secs(20), "the failed sync shown", || {
        cloud().filter(|c| c["last_sync"]["ok"] == false)
    });
    assert_eq!(
        failing["state"], "running",
        "a failing poll keeps the state: {failing}"
    );
    assert_eq!(failing["provider_state"], "ACTIVE", "{failing}");
    let error = failing["last_sync"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("status command") && error.contains("exit code 1"),
        "{failing}"
    );
    let (_, metrics) = crate::support::http_get(&addr, "/metrics").expect("GET /metrics");
    assert!(
        metrics.contains("kinfra_resource_last_sync_ok{resource=\"cloud\"} 0"),
        "{metrics}"
    );

    std::fs::write(p.path().join("cloud.state"), "ACTIVE\n").expect("restore the state file");
    wait_for(Duration::from_secs(20), "back in sync", || {
        cloud().filter(|c| c["last_sync"]["ok"] == true && c["state"] == "running")
    });

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

#[test]
fn an_http_api_resource_offers_its_declared_commands() {
    let tag = unique_tag("provider-http");
    let token = "api-tok-7Hq2-secret";
    let p = Project::with_config(&format!(
        "[project]\nname = \"ph\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.api]\nprovider = \"http-api\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         token = \"{token}\"\n\
         [resources.db]\nprovider = \"api\"\ninterval = \"1s\"\nproject_id = \"p1\"\n\
         status = {{ method = \"GET\", path = \"/projects/{{project_id}}\" }}\n\
         state_pointer = \"/project/status\"\nstate_map = {{ ACTIVE = \"running\" }}\n\
         [[resources.db.commands]]\nid = \"scale\"\nmethod = \"POST\"\n\
         path = \"/projects/{{project_id}}/endpoints/{{endpoint}}\"\n\
         params = [{{ name = \"endpoint\", kind = \"string\", required = true }}, \
         {{ name = \"replicas\", kind = \"integer\", required = true }}]\n"
    ));
    let mut up = p.up(&[], &[]);

    let out = p.run(&["resource", "db", "scale", "--param", "replicas=x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`replicas`: expected an integer, got `x`"),
        "{err}"
    );
    let out = p.run(&[
        "resource",
        "db",
        "scale",
        "--param",
        "endpoint=e1",
        "--param",
        "replicas=3",
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains(token), "the token leaked: {text}");
    let result: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(result["requests"][0]["method"], "POST", "{result}");
    assert_eq!(
        result["requests"][0]["url"], "http://127.0.0.1:9/v1/projects/p1/endpoints/e1",
        "{result}"
    );
    assert_eq!(result["requests"][0]["body"]["replicas"], 3, "{result}");

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
}

/// A plugin that crashes fails its own resources with a clear message while the runtime and
/// the other services carry on: the Python plugin's `crash` command makes the child exit 3;
/// its resource (`restart = "no"`) ends `failed` with a status message and a log line naming
/// the plugin crash, and a plain service next to it keeps running with the same PID.
#[test]
fn a_plugin_crash_fails_its_resource_with_the_reason_and_others_carry_on() {
    let tag = unique_tag("provider-crash");
    let dir = plugin_dir();
    let p = Project::with_config(&format!(
        "[project]\nname = \"pc\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers]\nplugin_dirs = [\"{}\"]\n\
         [providers.fake]\nprovider = \"pyfake\"\ntoken = \"tok-crash\"\n\
         [resources.thing]\nprovider = \"fake\"\ninterval = \"200ms\"\nproject_id = \"p1\"\n\
         restart = \"no\"\n\
         [services.app]\ncommand = \"exec sleep 1000\"\n",
        dir.display()
    ));
    let mut up = p.up(&[], &[]);
    let thing = |p: &Project| crate::cli::status_json(p)["services"]["thing"].clone();
    wait_for(Duration::from_secs(20), "thing running", || {
        (thing(&p)["state"] == "running").then_some(())
    });
    let app_pid = wait_for(Duration::from_secs(20), "app running", || {
        crate::cli::running_pid(&p, "app")
    });

    let out = p.run(&["resource", "thing", "crash"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    let failed = wait_for(Duration::from_secs(20), "thing failed", || {
        Some(thing(&p)).filter(|t| t["state"] == "failed")
    });
    let message = failed["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("plugin `pyfake` crashed") && message.contains("exit code 3"),
        "{failed}"
    );
    let out = p.run(&["runtime", "logs", "thing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("plugin `pyfake` crashed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        crate::cli::running_pid(&p, "app"),
        Some(app_pid),
        "the other service carried on"
    );

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

/// Every command execution is kept in the store's history: `kinfra runtime history NAME`
/// lists a resource's dry-runs and real runs with how they went, parameter names only.
#[test]
fn runtime_history_lists_a_resource_s_command_executions() {
    let tag = unique_tag("provider-hist");
    let secret = "sekrit-Hq27-do-not-show";
    let p = Project::with_config(
        &config(&tag, "")
            .replace("[env]\n", &format!("[env]\nFLAG_TOKEN = \"{secret}\"\n"))
            .replace(
                "stop = \"rm -f flag.state\"",
                "stop = \"rm -f flag.state $FLAG_TOKEN.none\"",
            ),
    );
    let mut up = p.up(&[], &[]);
    let state = |p: &Project| crate::cli::status_json(p)["services"]["flag"]["state"].clone();
    wait_for(Duration::from_secs(20), "flag running", || {
        (state(&p) == "running").then_some(())
    });

    // Before any command: the same `{runs, commands}` shape, `commands` empty.
    let out = p.run(&["runtime", "history", "flag", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("history json");
    assert!(json["runs"].is_array(), "{json}");
    assert_eq!(json["commands"], serde_json::json!([]), "{json}");

    let out = p.run(&["resource", "flag", "start", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["resource", "flag", "stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!p.path().join("flag.state").exists(), "the stop ran");

    // The store writes in batches: wait until both are on record.
    let commands = wait_for(Duration::from_secs(20), "two commands on record", || {
        let out = p.run(&["runtime", "history", "flag", "--json"]);
        let text = stdout(&out);
        assert!(!text.contains(secret), "a secret in the history: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        assert!(json["runs"].is_array(), "{json}");
        let commands = json["commands"].as_array()?.clone();
        (commands.len() == 2).then_some(commands)
    });
    // Newest first.
    assert_eq!(commands[0]["command"], "stop", "{commands:?}");
    assert_eq!(commands[0]["dry_run"], false, "{commands:?}");
    assert_eq!(commands[0]["success"], true, "{commands:?}");
    assert_eq!(commands[1]["command"], "start", "{commands:?}");
    assert_eq!(commands[1]["dry_run"], true, "{commands:?}");
    assert_eq!(commands[1]["resource"], "flag", "{commands:?}");

    let out = p.run(&["runtime", "history", "flag"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains(secret), "{text}");
    let line = |cmd: &str| {
        text.lines()
            .find(|l| l.starts_with(cmd))
            .unwrap_or_else(|| panic!("no `{cmd}` line: {text}"))
            .to_owned()
    };
    assert!(
        text.contains("COMMAND") && text.contains("DRY-RUN"),
        "{text}"
    );
    assert!(
        line("start").contains(" yes ") && line("start").ends_with("ok"),
        "{text}"
    );
    assert!(
        line("stop").contains(" no ") && line("stop").ends_with("ok"),
        "{text}"
    );

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}
